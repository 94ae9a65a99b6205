//! The seam between the ingest and a rebuild: how a rebuild regenerates
//! the projections while the ingest keeps consuming, and swaps in exactly
//! what a rebuild at rest would give. Both sides call this module; the
//! rebuild's phases (`rebuild::run`) and the ingest's batch
//! (`ingest::batch`) are its two halves.
//!
//! The live tables hold exactly the events the ingest has *consumed*
//! (deleted from the outbox), and so do the running totals ([`crate::totals`]).
//! A run builds that set at one instant and moves it forward:
//!
//! 1. **Register, with the ingest at rest.** Every batch holds [`SEAM_LOCK`]
//!    shared until it commits ([`begin_batch`]); the run takes it
//!    exclusively ([`rest`]), so no batch is in flight and none starts. It
//!    re-pushes pending cells (live = running totals), freezes the live
//!    tables into `*_frozen`, records itself in `rebuild_runs` with
//!    `journaling`, takes a REPEATABLE READ snapshot of the write store and
//!    lets go ([`resume`]). At that snapshot, "consumed" is "in the write
//!    tables and not in the outbox".
//! 2. **Build** from the snapshot: facts, and cells minus the projection of
//!    the events still in the snapshot's outbox. From registration on,
//!    every batch copies what it claims into `rebuild_journal` in the
//!    claiming statement itself ([`ClaimFrom::sql`]); an event it parks
//!    instead of counting is taken out again ([`unjournal`]), so the
//!    journal holds exactly what the totals hold.
//! 3. **Compare** shadow with frozen: both describe one instant, so any
//!    difference is drift, not lag.
//! 4. **Swap.** Replay the journal onto the shadow while the ingest runs;
//!    rest it again, replay the remainder, and in one PostgreSQL
//!    transaction set the running totals to the shadow's cells and mark the
//!    run `swapping`; then replace the live partitions and mark it
//!    `swapped`. A batch claims nothing while a run is `swapping`
//!    ([`SeamState::swapping`]): a crash in between leaves a state the next
//!    run completes, never one the ingest races.
//!
//! Invariants:
//! - A batch reads the seam state ([`SeamState`]) in a statement *after*
//!   the one that took its lock: a statement sees the database as of its
//!   own start, so one that waited for the lock would miss a run registered
//!   meanwhile and consume events unjournaled.
//! - The reporting zone changes only under the exclusive lock, together
//!   with the running totals, and a batch reads it with the seam state: a
//!   batch counts wholly in one calendar.
//! - ClickHouse is ordered by version across the seam: shadow cells carry
//!   versions drawn after registration, so a push in flight from before it
//!   loses, and a push from after it touched a cell the replay rewrote with
//!   a newer version still.
//! - The journal is kept only while some run is `journaling` (a rebuild
//!   until the next swap: its rollback window); [`trim_journal`].

use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, Transaction};
use tally_domain::{EventEnvelope, EventId, OrderId};
use time::OffsetDateTime;
use uuid::Uuid;

/// Held shared by every ingest batch until it commits, exclusively by a
/// rebuild while it must see the ingest at rest.
pub const SEAM_LOCK: i64 = 0x7461_6c6c_7365_616d; // "tallseam"

/// What a claim reads of each outbox row ([`OutboxRow`]); a macro so that
/// the claim statements below are built at compile time.
#[macro_export]
macro_rules! outbox_columns {
    () => {
        "id, event_id, aggregate_id, aggregate_version, event_type, schema_version,
         occurred_at, payload::text AS payload, created_at"
    };
}

/// The columns of an [`OutboxRow`], for anyone reading the outbox.
pub const OUTBOX_COLUMNS: &str = outbox_columns!();

/// Lock, read and delete up to `$1` outbox rows that no other worker
/// holds, from one end of the outbox (`ASC`: oldest first).
macro_rules! claim {
    ($order:literal) => {
        concat!(
            "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox ORDER BY id ",
            $order,
            " LIMIT $1 FOR UPDATE SKIP LOCKED
         )"
        )
    };
}

/// The claim while a rebuild needs the events too: the claimed rows are
/// copied into `rebuild_journal` by the same statement.
macro_rules! claim_and_journal {
    ($order:literal) => {
        concat!(
            "WITH claimed AS (",
            claim!($order),
            " RETURNING *
     ), journaled AS (
         INSERT INTO rebuild_journal (outbox_id, event_id, aggregate_id, aggregate_version, event_type,
                                      schema_version, occurred_at, payload, created_at)
         SELECT id, event_id, aggregate_id, aggregate_version, event_type, schema_version,
                occurred_at, payload, created_at
         FROM claimed
     )
     SELECT ",
            outbox_columns!(),
            " FROM claimed"
        )
    };
}

/// Claims up to `$1` outbox rows, oldest first. Public so that `tally
/// bench drain` measures PostgreSQL alone with exactly this statement.
pub const CLAIM_SQL: &str = concat!(claim!("ASC"), " RETURNING ", outbox_columns!());

/// Takes the one outbox row `$1` (to park it), if no one else has.
pub const TAKE_ONE_SQL: &str = concat!(
    "DELETE FROM outbox WHERE id = $1 RETURNING ",
    outbox_columns!()
);

/// Which end of the outbox a worker claims from.
///
/// Correctness does not depend on it: a fact row wins by its version,
/// daily deltas add up in any order, and the watermark is the oldest row
/// still waiting wherever the workers take from. It is about contention:
/// two workers at the same end meet on the same index pages (`SKIP LOCKED`
/// still visits the rows the other holds, and the dead entries both
/// leave); a second worker at the other end meets the first only when the
/// backlog is nearly gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClaimFrom {
    /// Oldest first: the watermark moves as the backlog shrinks.
    #[default]
    Oldest,
    /// Newest first: for a second worker beside an oldest-first one.
    Newest,
}

impl ClaimFrom {
    /// The `i`th of several workers started together: alternate ends, the
    /// first from the oldest.
    pub fn alternating(i: usize) -> ClaimFrom {
        if i.is_multiple_of(2) {
            ClaimFrom::Oldest
        } else {
            ClaimFrom::Newest
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimFrom::Oldest => "oldest",
            ClaimFrom::Newest => "newest",
        }
    }

    /// The claiming statement, journaling while a run needs the events.
    pub fn sql(self, journaling: bool) -> &'static str {
        match (self, journaling) {
            (ClaimFrom::Oldest, false) => CLAIM_SQL,
            (ClaimFrom::Newest, false) => {
                concat!(claim!("DESC"), " RETURNING ", outbox_columns!())
            }
            (ClaimFrom::Oldest, true) => claim_and_journal!("ASC"),
            (ClaimFrom::Newest, true) => claim_and_journal!("DESC"),
        }
    }
}

impl std::str::FromStr for ClaimFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oldest" => Ok(ClaimFrom::Oldest),
            "newest" => Ok(ClaimFrom::Newest),
            other => Err(format!(
                "unknown claim end {other:?}: use \"oldest\" or \"newest\""
            )),
        }
    }
}

impl std::fmt::Display for ClaimFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An outbox row (or a journal row, which has the same shape).
#[derive(sqlx::FromRow, Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    pub aggregate_version: i32,
    pub event_type: String,
    pub schema_version: i16,
    pub occurred_at: OffsetDateTime,
    pub payload: String,
    pub created_at: OffsetDateTime,
}

impl OutboxRow {
    pub fn decode(&self) -> Result<EventEnvelope, tally_domain::DecodeError> {
        EventEnvelope::decode(
            EventId::from_uuid(self.event_id),
            OrderId::from_uuid(self.aggregate_id),
            i64::from(self.aggregate_version),
            &self.event_type,
            self.schema_version,
            self.occurred_at,
            self.payload.as_bytes(),
        )
    }
}

/// What a batch must know of rebuilds and of the deployment, read after
/// the seam lock (see the invariants above).
#[derive(Debug)]
pub struct SeamState {
    /// A run is collecting the events batches consume.
    pub journaling: bool,
    /// A run's swap is under way or was interrupted: claim nothing.
    pub swapping: bool,
    /// The deployment's reporting zone, as recorded.
    pub recorded_zone: Option<String>,
}

/// A batch's transaction: [`SEAM_LOCK`] taken shared, then the seam state
/// read by the next statement.
pub async fn begin_batch(
    pool: &PgPool,
) -> Result<(Transaction<'static, Postgres>, SeamState), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(SEAM_LOCK)
        .execute(&mut *tx)
        .await?;
    let (journaling, swapping, recorded_zone) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM rebuild_runs WHERE journaling),
                EXISTS (SELECT 1 FROM rebuild_runs WHERE state = 'swapping'),
                (SELECT value FROM deployment_settings WHERE key = 'reporting_zone')",
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok((
        tx,
        SeamState {
            journaling,
            swapping,
            recorded_zone,
        },
    ))
}

/// Waits for in-flight batches to commit and keeps new ones out, on a
/// connection of the caller's (session-level: released with the
/// connection if the process dies). The connection's `lock_timeout`
/// bounds the wait.
pub async fn rest(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock($1)::text")
        .bind(SEAM_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Lets batches run again after [`rest`].
pub async fn resume(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SEAM_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes parked events out of the journal, in the batch's transaction.
pub async fn unjournal(
    tx: &mut Transaction<'_, Postgres>,
    outbox_ids: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM rebuild_journal WHERE outbox_id = ANY($1)")
        .bind(outbox_ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Journal rows after sequence number `after`, oldest first, at most
/// `limit`: the events to replay onto a shadow.
pub async fn read_journal(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, OutboxRow)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct JournalRow {
        seq: i64,
        #[sqlx(flatten)]
        row: OutboxRow,
    }
    let rows: Vec<JournalRow> = sqlx::query_as(
        "SELECT seq, outbox_id AS id, event_id, aggregate_id, aggregate_version, event_type,
                schema_version, occurred_at, payload::text AS payload, created_at
         FROM rebuild_journal WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|j| (j.seq, j.row)).collect())
}

/// Deletes the journal unless some run still needs it.
pub async fn trim_journal(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM rebuild_journal WHERE NOT EXISTS (SELECT 1 FROM rebuild_runs WHERE journaling)",
    )
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_claim_reads_the_outbox_row_shape_and_only_journaling_claims_journal() {
        for from in [ClaimFrom::Oldest, ClaimFrom::Newest] {
            for journaling in [false, true] {
                let sql = from.sql(journaling);
                assert!(sql.contains(OUTBOX_COLUMNS), "{sql}");
                assert_eq!(sql.contains("rebuild_journal"), journaling, "{sql}");
                assert!(sql.contains("SKIP LOCKED"), "{sql}");
                let order = if from == ClaimFrom::Oldest {
                    "ASC"
                } else {
                    "DESC"
                };
                assert!(sql.contains(&format!("ORDER BY id {order}")), "{sql}");
            }
        }
        assert!(TAKE_ONE_SQL.ends_with(OUTBOX_COLUMNS));
    }

    #[test]
    fn claim_ends_parse_and_alternate() {
        assert_eq!("newest".parse(), Ok(ClaimFrom::Newest));
        assert!(
            "middle"
                .parse::<ClaimFrom>()
                .unwrap_err()
                .contains("oldest")
        );
        assert_eq!(ClaimFrom::alternating(0), ClaimFrom::Oldest);
        assert_eq!(ClaimFrom::alternating(3), ClaimFrom::Newest);
    }
}
