//! Phase 3: the shadow against the frozen live tables. Both describe the
//! registration's instant, so any difference is drift, not lag. The cells
//! are written to PostgreSQL (and the ingest's running totals compared
//! with them there) while ClickHouse and polars compare the facts; one
//! report file takes the rows of both comparisons.

use std::sync::Arc;
use std::time::Instant;

use sqlx::{PgPool, Postgres, Transaction};

use super::RunOptions;
use super::build::{Cells, Pass, write_cells};
use crate::RebuildError;
use crate::compare::{Sink, TableDrift};
use crate::report::CsvReport;
use crate::tables::{self, Copy};
use crate::{daily, facts};

/// What the comparison found.
pub(super) struct Compared {
    /// Cells in the rebuilt daily table.
    pub(super) cells: i64,
    /// Cells where the ingest's running totals disagree with the rebuild.
    pub(super) totals_drift: i64,
    pub(super) daily: TableDrift,
    pub(super) facts: TableDrift,
    /// The other fact tables ([`tally_projection::FACT_TABLES`]), by name.
    pub(super) fact_copies: std::collections::BTreeMap<String, TableDrift>,
    /// Orders left out of the facts comparison (events still waiting).
    pub(super) not_compared: u64,
}

/// Compares both projections; commits `snapshot` once the cells are in.
pub(super) async fn compare(
    pool: &PgPool,
    ch: &clickhouse::Client,
    opts: &RunOptions,
    pass: Pass,
    mut snapshot: Transaction<'static, Postgres>,
) -> Result<Compared, RebuildError> {
    let Pass {
        backlog,
        sums,
        version,
        facts: facts_writer,
        ..
    } = pass;
    let report = match &opts.report_file {
        Some(p) => Some(std::sync::Mutex::new(CsvReport::create(p)?)),
        None => None,
    };
    let poisoned = || RebuildError::Invariant("report writer poisoned".into());
    let sink = || match &report {
        Some(r) => Sink::every_row(|row| r.lock().map_err(|_| poisoned())?.write(row)),
        None => Sink::worst_only(),
    };
    let (mut sink_daily, mut sink_facts) = (sink(), sink());
    let cells_then_daily = async {
        match sums.into_sorted(&backlog.cells, version) {
            // From memory: PostgreSQL takes the cells while ClickHouse
            // compares them.
            Ok(sorted) => {
                let sorted = Arc::new(sorted);
                let write = async {
                    let r = write_cells(
                        &mut snapshot,
                        Cells::Sorted(sorted.clone()),
                        version,
                        &backlog.cells,
                    )
                    .await?;
                    snapshot.commit().await?;
                    Ok::<_, RebuildError>(r)
                };
                let (written, daily) = tokio::join!(
                    write,
                    daily::compare(pool, ch, opts, Some(sorted.clone()), &mut sink_daily)
                );
                let (cells, totals_drift) = written?;
                Ok::<_, RebuildError>((cells, totals_drift, daily?))
            }
            // Over budget: PostgreSQL adds up the spilled sums, then the
            // comparison reads them back.
            Err(sums) => {
                let (cells, totals_drift) = write_cells(
                    &mut snapshot,
                    Cells::Spilled(*sums),
                    version,
                    &backlog.cells,
                )
                .await?;
                snapshot.commit().await?;
                let daily = daily::compare(pool, ch, opts, None, &mut sink_daily).await?;
                Ok((cells, totals_drift, daily))
            }
        }
    };
    let facts = async {
        let t = Instant::now();
        let rows = facts_writer.finish().await?;
        tables::copy_facts_across(ch, Copy::Shadow).await?;
        tracing::debug!(
            rows,
            waited_ms = t.elapsed().as_millis() as u64,
            "shadow facts written"
        );
        facts::compare_all(ch, opts, &backlog.orders, &mut sink_facts).await
    };
    let (cells_and_daily, facts) = tokio::join!(cells_then_daily, facts);
    let ((cells, totals_drift, daily), facts) = (cells_and_daily?, facts?);
    drop((sink_daily, sink_facts));
    if let Some(r) = report {
        r.into_inner().map_err(|_| poisoned())?.finish()?;
    }
    Ok(Compared {
        cells,
        totals_drift,
        daily,
        facts: facts.facts,
        fact_copies: facts.copies,
        not_compared: facts.not_compared,
    })
}
