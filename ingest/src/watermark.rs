//! The freshness watermark: an instant W such that every event written to
//! the outbox before W is in the projections.
//!
//! W is the least of: PostgreSQL's clock read first; the start of every open
//! transaction on the write database (it may still write outbox rows, and
//! `outbox.created_at` is never earlier than its transaction's start); and
//! the `created_at` of every row still in the outbox, waiting in a pending
//! push, or in the dead-letter table. Reading the clock before the
//! activity snapshot, and the snapshot before the tables, leaves no window
//! in which an event can slip under W unprojected. A long transaction
//! therefore holds W back: that is the price of never over-claiming, and
//! the oldest transaction's age is a metric so operators can see it.

use sqlx::PgPool;
use time::OffsetDateTime;

/// What holds the watermark where it is: the oldest of its sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nothing waits: the watermark is the clock.
    Nothing,
    Transaction,
    Backlog,
    PendingPush,
    DeadLetter,
}

impl Holder {
    pub const ALL: [Holder; 5] = [
        Holder::Nothing,
        Holder::Transaction,
        Holder::Backlog,
        Holder::PendingPush,
        Holder::DeadLetter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Holder::Nothing => "nothing",
            Holder::Transaction => "transaction",
            Holder::Backlog => "backlog",
            Holder::PendingPush => "pending_push",
            Holder::DeadLetter => "dead_letter",
        }
    }

    /// What an operator reads in `tally ingest status`.
    pub fn explain(self) -> &'static str {
        match self {
            Holder::Nothing => "nothing: every committed event is projected",
            Holder::Transaction => "an open transaction on the write database",
            Holder::Backlog => "events waiting in the outbox",
            Holder::PendingPush => "a daily-totals push not yet confirmed",
            Holder::DeadLetter => {
                "dead letters: fix their cause, then `tally ingest retry --all` \
                 (list them with `tally ingest dead-letters`)"
            }
        }
    }
}

/// The watermark and the figures behind it, for metrics and `tally ingest status`.
#[derive(Debug, Clone)]
pub struct Freshness {
    pub now: OffsetDateTime,
    pub watermark: OffsetDateTime,
    pub held_by: Holder,
    pub backlog_rows: i64,
    pub oldest_backlog: Option<OffsetDateTime>,
    pub oldest_transaction: Option<OffsetDateTime>,
    pub pending_pushes: i64,
    pub dead_letters: i64,
}

/// Storage figures for `tally ingest status`: the outbox must not bloat.
#[derive(Debug, Clone)]
pub struct OutboxStorage {
    pub total_bytes: i64,
    pub live_tuples: i64,
    pub dead_tuples: i64,
    pub last_autovacuum: Option<OffsetDateTime>,
}

pub async fn outbox_storage(pool: &PgPool) -> Result<OutboxStorage, sqlx::Error> {
    let (total_bytes, live_tuples, dead_tuples, last_autovacuum) = sqlx::query_as(
        "SELECT pg_total_relation_size('outbox'), n_live_tup, n_dead_tup, last_autovacuum
         FROM pg_stat_user_tables WHERE relname = 'outbox'",
    )
    .fetch_one(pool)
    .await?;
    Ok(OutboxStorage {
        total_bytes,
        live_tuples,
        dead_tuples,
        last_autovacuum,
    })
}

pub async fn measure(pool: &PgPool) -> Result<Freshness, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let now: OffsetDateTime = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *conn)
        .await?;
    let oldest_transaction: Option<OffsetDateTime> = sqlx::query_scalar(
        "SELECT min(xact_start) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_type = 'client backend' AND xact_start IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    let (backlog_rows, oldest_backlog, pending_pushes, oldest_pending, dead_letters, oldest_dead): (
        i64,
        Option<OffsetDateTime>,
        i64,
        Option<OffsetDateTime>,
        i64,
        Option<OffsetDateTime>,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox), (SELECT min(created_at) FROM outbox),
                (SELECT count(*) FROM ingest_pending_pushes), (SELECT min(oldest_created_at) FROM ingest_pending_pushes),
                (SELECT count(*) FROM ingest_dead_letters), (SELECT min(created_at) FROM ingest_dead_letters)",
    )
    .fetch_one(&mut *conn)
    .await?;
    // Ties go to the first: a dead letter created in the same transaction
    // as nothing else is reported as itself, not as the clock.
    let (watermark, held_by) = [
        (oldest_dead, Holder::DeadLetter),
        (oldest_pending, Holder::PendingPush),
        (oldest_backlog, Holder::Backlog),
        (oldest_transaction, Holder::Transaction),
        (Some(now), Holder::Nothing),
    ]
    .into_iter()
    .filter_map(|(t, h)| t.map(|t| (t, h)))
    .fold((now, Holder::Nothing), |best, (t, h)| {
        if t < best.0 || (t == best.0 && best.1 == Holder::Nothing) {
            (t, h)
        } else {
            best
        }
    });
    Ok(Freshness {
        now,
        watermark,
        held_by,
        backlog_rows,
        oldest_backlog,
        oldest_transaction,
        pending_pushes,
        dead_letters,
    })
}
