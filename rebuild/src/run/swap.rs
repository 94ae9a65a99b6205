//! Phase 4: the shadow swapped in (`tally_projection::seam`, step 4), or
//! dropped when the run only verifies. The journal is replayed onto the
//! shadow while the ingest runs, the rest with the ingest at rest, and the
//! running totals are aligned with the shadow in the transaction that
//! marks the run `swapping`; the ClickHouse half ([`complete_swap`]) is
//! idempotent, so a run interrupted there is finished by the next.

use std::time::Instant;

use sqlx::PgPool;
use tally_projection::rows::{DailyRow, Projected, ReportingZone, project};
use tally_projection::seam;
use tally_projection::totals::{
    TOTALS_TABLE, TotalsRow, add_to_totals, each_measure, measures_differ, totals_columns,
};
use tally_projection::{deployment, insert_facts, insert_rows};

use super::register::{Locks, trim_journal};
use super::{CELLS_TABLE, Installing, RunOptions, RunOutcome};
use crate::RebuildError;
use crate::tables::{self, Copy};

/// Swaps the run's shadow in, after the checks that make a swap safe,
/// and records what it did in `outcome`.
pub(super) async fn swap(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    opts: &RunOptions,
    journal_from: i64,
    installing: Installing,
    outcome: &mut RunOutcome,
) -> Result<(), RebuildError> {
    if outcome.dead_letters > 0 {
        return Err(RebuildError::Refused(format!(
            "not swapping: {} dead-lettered event(s) would be counted by the rebuild but not by \
             the ingest's running totals. Fix and retry them first (`tally ingest dead-letters`, \
             `tally ingest retry <id>`), then run again",
            outcome.dead_letters
        )));
    }
    if outcome.orders == 0 && outcome.daily.extra + outcome.facts.extra > 0 {
        return Err(RebuildError::Refused(
            "not swapping: the write store has no orders but the live projections have rows. \
             Is --postgres-url pointing at the right database?"
                .into(),
        ));
    }
    let from = match &installing {
        Installing::ZoneChange { from } => Some(from.clone()),
        _ => None,
    };
    let installed = install(
        pool,
        ch,
        locks,
        outcome.run_id,
        journal_from,
        &opts.zone,
        installing,
    )
    .await?;
    if let Some(from) = from {
        let drift = if outcome.has_drift() {
            " (the drift above is the old calendar's days against the new one's)"
        } else {
            ""
        };
        outcome.notes.push(format!(
            "the deployment's reporting zone changed from {from} to {}; the running ingest \
             counts in {} from now on{drift}",
            opts.zone.name(),
            opts.zone.name()
        ));
        outcome.zone_changed_from = Some(from);
    }
    outcome.swapped = true;
    outcome.replayed_events = installed.replayed;
    outcome.ingest_paused_ms = installed.paused_ms;
    Ok(())
}

/// Closes a run that does not swap: recorded as verified, its copies
/// dropped, the journal trimmed.
pub(super) async fn close_unswapped(
    pool: &PgPool,
    ch: &clickhouse::Client,
    run_id: i64,
) -> Result<(), RebuildError> {
    sqlx::query(
        "UPDATE rebuild_runs SET state = 'verified', journaling = false, finished_at = clock_timestamp()
         WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(pool)
    .await?;
    trim_journal(pool).await?;
    tables::drop_copy(ch, Copy::Shadow).await?;
    tables::drop_copy(ch, Copy::Frozen).await?;
    Ok(())
}

/// Replays journal rows after `after` onto the shadow (facts) and
/// `rebuild_cells` + the shadow cells. Returns the last sequence applied
/// and how many events were replayed.
async fn catch_up(
    pool: &PgPool,
    ch: &clickhouse::Client,
    after: i64,
    zone: &ReportingZone,
) -> Result<(i64, u64), RebuildError> {
    let mut replayed = 0u64;
    let cells_shadow = Copy::Shadow.of("daily_revenue");
    let mut last = after;
    loop {
        let rows = seam::read_journal(pool, last, 10_000).await?;
        let Some((max_seq, _)) = rows.last() else {
            return Ok((last, replayed));
        };
        replayed += rows.len() as u64;
        last = *max_seq;
        // Rows the ingest could not decode were dead-lettered, not counted.
        let events: Vec<_> = rows.iter().filter_map(|(_, r)| r.decode().ok()).collect();
        // Events the ingest parked as overflowing are left out here by the
        // same rule, and the swap is refused while any dead letter exists.
        let Projected { facts, cells, .. } = project(&events, zone);
        insert_facts(ch, |live| Copy::Shadow.of(live), &facts).await?;
        if !cells.is_empty() {
            let mut tx = pool.begin().await?;
            let rows = add_to_totals(&mut tx, CELLS_TABLE, &cells).await?;
            insert_rows(ch, &cells_shadow, &rows).await?;
            tx.commit().await?;
        }
        tracing::debug!(events = events.len(), last_seq = last, "journal replayed");
    }
}

/// Replays the journal, aligns the ingest's totals with the shadow cells
/// and swaps the shadow in. `final_state` closes the rollback window when
/// the installed tables are themselves a rollback.
pub(super) async fn install(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    run_id: i64,
    journal_from: i64,
    zone: &ReportingZone,
    installing: Installing,
) -> Result<Installed, RebuildError> {
    let is_rollback = installing == Installing::Rollback;
    // Both end the rollback window and realign every cell.
    let realign_all = installing != Installing::Rebuild;
    let t = Instant::now();
    let (applied, before) = catch_up(pool, ch, journal_from, zone).await?;
    tracing::info!(
        replayed_to = applied,
        seconds = t.elapsed().as_secs_f64(),
        "journal replayed; pausing the ingest for the swap"
    );
    locks.seam().await?;
    let paused = Instant::now();
    let r = async {
        let (_, during) = catch_up(pool, ch, applied, zone).await?;
        // With the ingest at rest, dead letters are final: one parked
        // since the snapshot was journaled and replayed here, so swapping
        // would count it now and again when it is retried.
        // The calendar is the deployment's: a run in another zone would
        // swap in cells of other days under the ingest's feet.
        let recorded = deployment::recorded(pool).await?;
        let expected = match &installing {
            Installing::ZoneChange { from } => from.as_str(),
            _ => zone.name(),
        };
        if let Some(recorded) = recorded.filter(|r| !r.eq_ignore_ascii_case(expected)) {
            return Err(RebuildError::Refused(format!(
                "not swapping: this run counted days in {} but the deployment reports in \
                 {recorded}; run it again without --reporting-tz (or with {recorded}), or change \
                 the deployment's zone with `tally rebuild --reporting-tz {} --change-reporting-zone`",
                zone.name(),
                zone.name()
            )));
        }
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_dead_letters")
            .fetch_one(pool)
            .await?;
        if dead > 0 {
            return Err(RebuildError::Refused(format!(
                "not swapping: the ingest dead-lettered {dead} event(s) during the run. Fix and \
                 retry them first (`tally ingest dead-letters`, `tally ingest retry <id>`), then run again"
            )));
        }
        if let Installing::ZoneChange { .. } = &installing {
            outrank_pending_pushes(pool, ch).await?;
        }
        let mut tx = pool.begin().await?;
        // A rebuild rewrites the cells found to differ at its snapshot; a
        // rollback, whose base is older, and a zone change, whose cells are
        // other days, compare every cell.
        let (only, join) = if realign_all {
            ("", "")
        } else {
            (
                "AND EXISTS (SELECT 1 FROM rebuild_totals_drift d
                             WHERE d.day = t.day AND d.merchant_id = t.merchant_id AND d.currency = t.currency)",
                "JOIN rebuild_totals_drift USING (day, merchant_id, currency)",
            )
        };
        sqlx::query(&format!(
            "DELETE FROM {TOTALS_TABLE} t WHERE NOT EXISTS (
                 SELECT 1 FROM {CELLS_TABLE} r
                 WHERE r.day = t.day AND r.merchant_id = t.merchant_id AND r.currency = t.currency) {only}"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {TOTALS_TABLE} AS t ({cols})
             SELECT {cols} FROM {CELLS_TABLE} {join}
             ON CONFLICT (day, merchant_id, currency) DO UPDATE SET
                 {set}, version = excluded.version
             WHERE {differ}",
            cols = totals_columns(),
            set = each_measure(|m| format!("{m} = excluded.{m}"), ", "),
            differ = measures_differ("t", "excluded"),
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE rebuild_runs SET state = 'swapping', swapped = true, journaling = NOT $2
             WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(realign_all)
        .execute(&mut *tx)
        .await?;
        if let Installing::ZoneChange { from } = &installing {
            sqlx::query("DELETE FROM ingest_pending_pushes")
                .execute(&mut *tx)
                .await?;
            deployment::change(&mut *tx, zone, "tally rebuild --change-reporting-zone").await?;
            sqlx::query("UPDATE rebuild_runs SET message = $2 WHERE run_id = $1")
                .bind(run_id)
                .bind(format!(
                    "reporting zone changed from {from} to {}",
                    zone.name()
                ))
                .execute(&mut *tx)
                .await?;
        }
        // The previous rollback window ends here.
        sqlx::query("UPDATE rebuild_runs SET journaling = false WHERE journaling AND run_id <> $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        let keep_after = if realign_all { i64::MAX } else { journal_from };
        sqlx::query("DELETE FROM rebuild_journal WHERE seq <= $1")
            .bind(keep_after)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        complete_swap(pool, ch, run_id, if is_rollback { "rollback" } else { "rebuild" }).await?;
        Ok::<_, RebuildError>(before + during)
    }
    .await;
    let released = locks.release_seam().await;
    tracing::info!(
        run_id,
        paused_ms = paused.elapsed().as_millis() as u64,
        ok = r.is_ok(),
        "swap finished; ingest resumed"
    );
    let replayed = r?;
    released?;
    Ok(Installed {
        replayed,
        paused_ms: paused.elapsed().as_millis() as u64,
    })
}

pub(super) struct Installed {
    replayed: u64,
    paused_ms: u64,
}

/// Gives the shadow a row, newer than any push, for every cell key an
/// ingest push may still be carrying to ClickHouse (the module doc's
/// "zone change"): the rebuilt cell, or zeros where the new calendar has
/// none. Called with the ingest at rest, so the list cannot grow.
async fn outrank_pending_pushes(
    pool: &PgPool,
    ch: &clickhouse::Client,
) -> Result<(), RebuildError> {
    let version: i64 = sqlx::query_scalar("SELECT nextval('ingest_version_seq')")
        .fetch_one(pool)
        .await?;
    let rows: Vec<TotalsRow> = sqlx::query_as(&format!(
        "SELECT p.day, p.merchant_id, p.currency, {zeros}, $1::int8 AS version
         FROM (SELECT DISTINCT unnest(days) AS day, unnest(merchant_ids) AS merchant_id,
                      unnest(currencies) AS currency
               FROM ingest_pending_pushes) p
         LEFT JOIN {CELLS_TABLE} r USING (day, merchant_id, currency)",
        zeros = each_measure(|m| format!("coalesce(r.{m}, 0) AS {m}"), ", ")
    ))
    .bind(version)
    .fetch_all(pool)
    .await?;
    let rows: Vec<DailyRow> = rows.into_iter().map(DailyRow::from).collect();
    tracing::info!(
        cells = rows.len(),
        "shadow cells outranking pushes still in flight in the old calendar"
    );
    insert_rows(ch, &Copy::Shadow.of("daily_revenue"), &rows).await?;
    Ok(())
}

/// The ClickHouse half of a swap; safe to repeat until it has finished.
pub(super) async fn complete_swap(
    pool: &PgPool,
    ch: &clickhouse::Client,
    run_id: i64,
    kind: &str,
) -> Result<(), RebuildError> {
    let shadow_there = tables::exists(ch, &Copy::Shadow.of("order_facts")).await?
        && tables::exists(ch, &Copy::Shadow.of("daily_revenue")).await?;
    if shadow_there {
        let partitions = tables::swap_into_live(ch, Copy::Shadow).await?;
        tracing::info!(run_id, partitions, "shadow tables swapped in");
    }
    if kind == "rollback" {
        tables::drop_copy(ch, Copy::Previous).await?;
    } else if tables::exists(ch, &Copy::Frozen.of("order_facts")).await? {
        tables::rename_copy(ch, Copy::Frozen, Copy::Previous).await?;
    }
    sqlx::query(
        "UPDATE rebuild_runs SET state = 'swapped', finished_at = clock_timestamp() WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(pool)
    .await?;
    tables::drop_copy(ch, Copy::Shadow).await?;
    Ok(())
}
