//! The ingest worker: drains the PostgreSQL outbox into the ClickHouse
//! projections (the three fact tables, `daily_revenue`) and publishes the
//! freshness watermark.
//!
//! Exactly-once comes from where the state lives, not from ClickHouse:
//! running totals are kept in PostgreSQL and changed in the same
//! transaction that consumes the outbox rows, and ClickHouse only ever
//! receives whole rows tagged with a version (`batch.rs` has the steps,
//! `tally_projection::totals` the argument). Any number of workers may run
//! at once.
//!
//! The worker sleeps on `LISTEN tally_outbox` (the outbox's insert trigger
//! notifies), never polls an idle database faster than `idle_poll`, and
//! backs off with jitter while a store is down.

mod batch;
pub mod dead_letters;
pub mod metrics;
pub mod watermark;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tally_ops::{Replicas, Shutdown};
use tally_projection::totals::{self, TotalsError};
use time::OffsetDateTime;

pub use batch::BatchOutcome;
pub use metrics::Metrics;
pub use tally_projection::seam::ClaimFrom;
pub use tally_projection::{ReportingZone, WatermarkRow};

/// The NOTIFY channel the outbox trigger signals.
pub const CHANNEL: &str = "tally_outbox";
/// The stream name under which the watermark is recorded in ClickHouse.
pub const STREAM: &str = "orders";

#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Most outbox rows claimed, projected and committed together.
    pub batch_size: i64,
    /// Safety net: how often an idle worker looks at the outbox even
    /// without a notification (a lost LISTEN connection, say).
    pub idle_poll: Duration,
    /// How long a pending push may sit before another worker re-pushes it.
    pub pending_grace: Duration,
    /// Longest pause between retries while a store is unavailable.
    pub max_backoff: Duration,
    /// Least time between two watermark measurements while busy.
    pub watermark_interval: Duration,
    /// Which end of the outbox this worker claims from ([`ClaimFrom`]).
    pub claim_from: ClaimFrom,
    /// Where reporting days start and end. Changing it on a live system
    /// needs a rebuild: cells already counted stay on their old days.
    pub reporting_zone: ReportingZone,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_size: 10_000,
            idle_poll: Duration::from_secs(5),
            pending_grace: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10),
            watermark_interval: Duration::from_millis(100),
            claim_from: ClaimFrom::Oldest,
            reporting_zone: ReportingZone::utc(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error(transparent)]
    Insert(#[from] tally_projection::InsertError),
    #[error("ClickHouse: {0}")]
    ClickHouseQuery(#[from] clickhouse::error::Error),
    /// The batch of these outbox rows failed in a way that would recur for
    /// an event at fault (`dead_letters::Reason`); the worker retries them
    /// one at a time and parks the one that fails alone.
    #[error("a batch of {} event(s) failed deterministically ({}): {error}", outbox_ids.len(), reason.as_str())]
    Poisoned {
        outbox_ids: Vec<i64>,
        reason: dead_letters::Reason,
        error: String,
    },
    /// [`PARK_LIMIT`] events were parked in a row and the next fails the
    /// same way: the worker backs off instead of parking the outbox.
    #[error(
        "{parked} events in a row failed and were parked, and the next fails too ({error}): \
         that is a fault of this deployment, not of the events. Not parking more; fix the cause, \
         then `tally ingest retry --all`"
    )]
    NotPoison { parked: usize, error: String },
    /// The recorded reporting zone is not one this build knows.
    #[error("the deployment's reporting zone: {0}")]
    Zone(String),
}

impl IngestError {
    /// Whether the replica failed in a way another may not: it could not
    /// be reached, did not answer in time, or has lost ZooKeeper (its
    /// replicated tables are read-only). A refused query would be refused
    /// everywhere, and the worker stays put.
    pub fn is_replica_trouble(&self) -> bool {
        use tally_projection::InsertError as I;
        let replica_trouble = |e: &clickhouse::error::Error| {
            tally_ops::stores::unreachable(e)
                || matches!(e, clickhouse::error::Error::BadResponse(m) if m.contains("readonly mode"))
        };
        match self {
            IngestError::Insert(I::Timeout(_)) => true,
            IngestError::Insert(I::Failed { source, .. }) => replica_trouble(source),
            IngestError::ClickHouseQuery(e) => replica_trouble(e),
            _ => false,
        }
    }
}

impl From<TotalsError> for IngestError {
    fn from(e: TotalsError) -> Self {
        match e {
            TotalsError::Postgres(e) => IngestError::Postgres(e),
            TotalsError::Insert(e) => IngestError::Insert(e),
        }
    }
}

/// One ingest worker.
pub struct Worker {
    pool: PgPool,
    /// The replica this cycle writes to, taken from `replicas` at the start
    /// of each cycle.
    ch: clickhouse::Client,
    pinned: usize,
    replicas: Arc<Replicas>,
    config: IngestConfig,
    metrics: Metrics,
    published_watermark_us: i64,
    last_measured: Option<Instant>,
    /// Events were projected since the watermark was last measured.
    watermark_behind: bool,
    last_pause_warning: Option<Instant>,
    /// Batches whose totals are pushed but whose pending record is not yet
    /// deleted (`batch.rs`, step 4).
    settled: Vec<uuid::Uuid>,
    last_recovery: Option<Instant>,
    /// How many more batches to claim one event at a time, after a batch
    /// failed deterministically (`batch.rs`).
    isolate: usize,
    /// Events parked since an event was last counted ([`PARK_LIMIT`]).
    parked_in_a_row: usize,
}

/// Events parked in a row, with none counted between them, after which the
/// worker stops parking and backs off instead: a failure that hits every
/// event alike (a bug, a schema change) is not a poison event, and must not
/// empty the outbox into the dead letters.
pub const PARK_LIMIT: usize = 20;

/// Totals of a [`Worker::drain`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    pub batches: usize,
    pub claimed: usize,
    pub projected: usize,
    pub dead_lettered: usize,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        ch: clickhouse::Client,
        config: IngestConfig,
        metrics: Metrics,
    ) -> Self {
        Self::on_replicas(pool, Replicas::single(ch), config, metrics)
    }

    /// A worker writing to one replica of `replicas` at a time: a cycle
    /// that fails on a ClickHouse error moves it to the next, where the
    /// same events are pushed again (absolute, versioned rows: a push that
    /// reached the failed replica too changes nothing).
    ///
    /// Replication is asynchronous: rows a replica acknowledged and then
    /// lost with it before its peers fetched them are missing elsewhere
    /// until it returns (the outbox has let them go), and for good if its
    /// disk is lost: `tally verify` finds them and a rebuild restores them
    /// from the write store. While ZooKeeper is down the replicated tables
    /// are read-only, pushes fail, and the events wait in the outbox.
    pub fn on_replicas(
        pool: PgPool,
        replicas: Arc<Replicas>,
        config: IngestConfig,
        metrics: Metrics,
    ) -> Self {
        let first = replicas.current();
        Worker {
            pool,
            ch: first.client,
            pinned: first.index,
            replicas,
            config,
            metrics,
            published_watermark_us: i64::MIN,
            last_measured: None,
            watermark_behind: false,
            last_pause_warning: None,
            settled: Vec::new(),
            last_recovery: None,
            isolate: 0,
            parked_in_a_row: 0,
        }
    }

    /// Processes batches until the outbox is empty and no push is pending,
    /// then publishes the watermark. Tests call this instead of sleeping.
    pub async fn drain(&mut self) -> Result<DrainOutcome, IngestError> {
        let mut total = DrainOutcome::default();
        totals::recover_pending(&self.pool, &self.ch, Duration::ZERO).await?;
        loop {
            let b = self.one_batch().await?;
            if b.claimed == 0 {
                break;
            }
            total.batches += 1;
            total.claimed += b.claimed;
            total.projected += b.projected;
            total.dead_lettered += b.dead_lettered;
        }
        self.publish_watermark(true).await?;
        Ok(total)
    }

    /// Runs until `shutdown` fires. A batch in progress is finished first
    /// (it is one short transaction plus two inserts); a batch that fails
    /// is rolled back and its events are claimed again.
    pub async fn run(mut self, shutdown: Shutdown) -> Result<(), IngestError> {
        let mut listener = None;
        let mut backoff = Duration::ZERO;
        tracing::info!(batch_size = self.config.batch_size, "ingest worker started");
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if listener.is_none() {
                listener = self.listen().await;
            }
            match self.cycle().await {
                Ok(claimed_full_batch) => {
                    backoff = Duration::ZERO;
                    if claimed_full_batch {
                        continue; // more is waiting: no sleep
                    }
                }
                Err(e) => {
                    if e.is_replica_trouble() && self.replicas.failed(self.pinned) {
                        // Another replica may take the push at once.
                        backoff = Duration::ZERO;
                    }
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), self.config.max_backoff);
                    let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                    tracing::warn!(error = %tally_ops::error_chain(&e), retry_in_ms = jittered.as_millis() as u64, "ingest cycle failed; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(jittered) => {}
                    }
                    continue;
                }
            }
            // Idle: wait for a notification, the safety-net poll, or shutdown.
            let wait = async {
                match listener.as_mut() {
                    Some(l) => {
                        if let Err(e) = l.recv().await {
                            tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                            return false;
                        }
                        // Collapse notifications that queued up meanwhile.
                        while l.next_buffered().is_some() {}
                        true
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        true
                    }
                }
            };
            // A watermark measurement skipped by the rate limit is made up
            // as soon as the interval has passed, even with no new event.
            let until_watermark = match (self.watermark_behind, self.last_measured) {
                (true, Some(t)) => self.config.watermark_interval.saturating_sub(t.elapsed()),
                _ => self.config.idle_poll,
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(until_watermark.min(self.config.idle_poll)) => {
                    if self.watermark_behind
                        && let Err(e) = self.publish_watermark(true).await {
                            tracing::warn!(error = %e, "publishing the watermark failed");
                        }
                }
                ok = wait => if !ok { listener = None; },
            }
        }
        if let Err(e) = batch::clear_settled(&self.pool, &mut self.settled).await {
            // Harmless: another worker re-pushes those cells after the grace.
            tracing::warn!(error = %e, "could not clear the last pending-push records");
        }
        tracing::info!("ingest worker stopped");
        Ok(())
    }

    async fn listen(&self) -> Option<PgListener> {
        let attempt = async {
            let mut l = PgListener::connect_with(&self.pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match attempt.await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for outbox notifications; polling instead");
                None
            }
        }
    }

    async fn one_batch(&mut self) -> Result<BatchOutcome, IngestError> {
        let b = loop {
            let c = &mut self.config;
            let limit = if self.isolate > 0 { 1 } else { c.batch_size };
            let r = batch::run_batch(
                &self.pool,
                &self.ch,
                limit,
                c.claim_from,
                &mut c.reporting_zone,
                &self.metrics,
                &mut self.settled,
            )
            .await;
            match r {
                Err(IngestError::Poisoned {
                    outbox_ids,
                    reason,
                    error,
                }) => {
                    if let [id] = outbox_ids[..] {
                        if self.parked_in_a_row >= PARK_LIMIT {
                            return Err(IngestError::NotPoison {
                                parked: self.parked_in_a_row,
                                error,
                            });
                        }
                        self.isolate = self.isolate.saturating_sub(1);
                        let b = batch::park(&self.pool, id, reason, &error, &self.metrics).await?;
                        self.parked_in_a_row += b.dead_lettered;
                        break b;
                    }
                    tracing::warn!(
                        events = outbox_ids.len(),
                        reason = reason.as_str(),
                        error,
                        "a batch failed deterministically; retrying its events one at a time"
                    );
                    self.isolate = outbox_ids.len();
                }
                Err(e) => return Err(e),
                Ok(b) => {
                    if b.claimed > 0 {
                        self.isolate = self.isolate.saturating_sub(1);
                    }
                    if b.projected > 0 {
                        self.parked_in_a_row = 0;
                    }
                    break b;
                }
            }
        };
        if b.paused
            && self
                .last_pause_warning
                .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
        {
            self.last_pause_warning = Some(Instant::now());
            tracing::warn!(
                "a rebuild's swap was interrupted; ingest waits until it is completed \
                 (run `tally rebuild`, or let the scheduler do it)"
            );
        }
        Ok(b)
    }

    /// One batch plus housekeeping. `Ok(true)` if the batch was full.
    async fn cycle(&mut self) -> Result<bool, IngestError> {
        let replica = self.replicas.current();
        if replica.index != self.pinned {
            self.ch = replica.client;
            self.pinned = replica.index;
        }
        // Only records older than the grace are recovered: looking a few
        // times per grace period is enough, not before every batch.
        if self
            .last_recovery
            .is_none_or(|t| t.elapsed() >= self.config.pending_grace / 4)
        {
            totals::recover_pending(&self.pool, &self.ch, self.config.pending_grace).await?;
            self.last_recovery = Some(Instant::now());
        }
        let b = self.one_batch().await?;
        let full = b.claimed > 0 && b.claimed as i64 >= b.limit;
        // Rate-limited even when idle: the measurement (three queries and an
        // insert) would otherwise sit in front of every next batch.
        self.watermark_behind |= b.projected > 0 || b.dead_lettered > 0;
        self.publish_watermark(false).await?;
        Ok(full)
    }

    /// Measures the watermark (at most every `watermark_interval` unless
    /// `force`) and records it in ClickHouse when it moved forward.
    async fn publish_watermark(&mut self, force: bool) -> Result<(), IngestError> {
        if !force
            && self
                .last_measured
                .is_some_and(|t| t.elapsed() < self.config.watermark_interval)
        {
            return Ok(());
        }
        self.last_measured = Some(Instant::now());
        let f = watermark::measure(&self.pool).await?;
        let secs =
            |t: Option<OffsetDateTime>| t.map_or(0.0, |t| (f.now - t).as_seconds_f64().max(0.0));
        self.metrics.backlog_rows.set(f.backlog_rows);
        self.metrics
            .backlog_oldest_seconds
            .set(secs(f.oldest_backlog));
        self.metrics
            .oldest_transaction_seconds
            .set(secs(f.oldest_transaction));
        self.metrics
            .freshness_lag_seconds
            .set(secs(Some(f.watermark)));
        self.metrics.dead_letter_rows.set(f.dead_letters);
        self.metrics.held_by(f.held_by);
        let us = i64::try_from(f.watermark.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
        if us > self.published_watermark_us {
            let row = WatermarkRow {
                stream: STREAM.into(),
                watermark_us: us,
                recorded_at: f.now,
            };
            tally_projection::insert_rows(&self.ch, "ingest_watermark", std::slice::from_ref(&row))
                .await?;
            self.published_watermark_us = us;
        }
        // Only once it is published: a failed insert is retried.
        self.watermark_behind = false;
        Ok(())
    }
}
