//! `tally rebuild rollback`: the tables from before the last swap, moved
//! forward by every event consumed since (the journal), installed the way
//! a rebuild's shadow is.

use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;
use tally_domain::DailyMeasures;
use tally_projection::rows::DailyRow;
use tally_projection::totals::{measure_arrays, totals_columns};
use tally_projection::{FACT_TABLES, insert_rows};
use time::Date;

use super::register::{Locks, finish_interrupted, host, lock_or_skip};
use super::swap::install;
use super::{CELLS_TABLE, Installing, RunOptions, mark_failed};

use crate::RebuildError;
use crate::tables::{self, Copy};

/// What `tally rebuild rollback` did.
#[derive(Clone, Debug, Serialize)]
pub struct RollbackOutcome {
    pub run_id: i64,
    pub rolled_back_run: i64,
    pub cells: u64,
    pub seconds: f64,
}

/// Puts the tables from before the last swap back, moved forward by every
/// event consumed since (the journal), and ends the rollback window.
pub async fn rollback(
    pool: &PgPool,
    ch: &clickhouse::Client,
    opts: &RunOptions,
) -> Result<RollbackOutcome, RebuildError> {
    let started = Instant::now();
    let mut locks = Locks::connect(pool).await?;
    lock_or_skip(pool, &mut locks, "rollback", &opts.trigger).await?;
    let r = rollback_locked(pool, ch, &mut locks, opts, started).await;
    locks.release().await;
    r
}

/// [`rollback`] once it holds the run lock.
async fn rollback_locked(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    opts: &RunOptions,
    started: Instant,
) -> Result<RollbackOutcome, RebuildError> {
    finish_interrupted(pool, ch).await?;
    let target: Option<(i64, i64)> = sqlx::query_as(
        "SELECT run_id, journal_from FROM rebuild_runs
         WHERE journaling AND swapped AND state = 'swapped' AND kind IN ('rebuild', 'verify')
         ORDER BY run_id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let Some((target, journal_from)) = target else {
        return Err(RebuildError::Refused(
            "nothing to roll back: a rollback is possible after a swap, until the next successful \
             one or rollback (see `tally rebuild history`)"
                .into(),
        ));
    };
    for live in tables::PROJECTIONS {
        if !tables::exists(ch, &Copy::Previous.of(live)).await? {
            return Err(RebuildError::Refused(format!(
                "cannot roll back run #{target}: ClickHouse table {} is gone",
                Copy::Previous.of(live)
            )));
        }
    }
    let (run_id,): (i64,) = sqlx::query_as(
        "INSERT INTO rebuild_runs (kind, trigger, state, journaling, journal_from, host, message)
         VALUES ('rollback', $1, 'building', false, $2, $3, $4) RETURNING run_id",
    )
    .bind(&opts.trigger)
    .bind(journal_from)
    .bind(host())
    .bind(format!("rollback of run #{target}"))
    .fetch_one(pool)
    .await?;
    let r = async {
        // Shadow := previous. Facts keep their versions (states by
        // aggregate version); cells get a version newer than any push so
        // far, like a rebuild's.
        tables::recreate(ch, Copy::Shadow).await?;
        for t in FACT_TABLES {
            tables::replace_all_partitions(
                ch,
                &Copy::Previous.of(t.live),
                &Copy::Shadow.of(t.live),
            )
            .await?;
        }
        let v0: i64 = sqlx::query_scalar("SELECT nextval('ingest_version_seq')")
            .fetch_one(pool)
            .await?;
        sqlx::query("TRUNCATE rebuild_cells").execute(pool).await?;
        let mut cursor = ch
            .query(&format!(
                "SELECT ?fields FROM {} FINAL",
                Copy::Previous.of("daily_revenue")
            ))
            .fetch::<DailyRow>()?;
        let mut cells = 0u64;
        let mut chunk = Vec::new();
        loop {
            let next = cursor.next().await?;
            let done = next.is_none();
            if let Some(mut row) = next {
                row.version = v0 as u64;
                chunk.push(row);
            }
            if chunk.len() >= 10_000 || (done && !chunk.is_empty()) {
                cells += chunk.len() as u64;
                load_cells(pool, &chunk).await?;
                insert_rows(ch, &Copy::Shadow.of("daily_revenue"), &chunk).await?;
                chunk.clear();
            }
            if done {
                break;
            }
        }
        install(
            pool,
            ch,
            locks,
            run_id,
            journal_from,
            &opts.zone,
            Installing::Rollback,
        )
        .await?;
        sqlx::query("UPDATE rebuild_runs SET state = 'rolled_back' WHERE run_id = $1")
            .bind(target)
            .execute(pool)
            .await?;
        sqlx::query("UPDATE rebuild_runs SET cells = $2 WHERE run_id = $1")
            .bind(run_id)
            .bind(cells as i64)
            .execute(pool)
            .await?;
        Ok::<_, RebuildError>(cells)
    }
    .await;
    match r {
        Ok(cells) => Ok(RollbackOutcome {
            run_id,
            rolled_back_run: target,
            cells,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            mark_failed(pool, run_id, &e).await;
            Err(e)
        }
    }
}

async fn load_cells(pool: &PgPool, rows: &[DailyRow]) -> Result<(), RebuildError> {
    let days: Vec<Date> = rows.iter().map(|r| r.day).collect();
    let merchants: Vec<&str> = rows.iter().map(|r| r.merchant_id.as_str()).collect();
    let currencies: Vec<String> = rows
        .iter()
        .map(|r| String::from_utf8_lossy(&r.currency).into_owned())
        .collect();
    let versions: Vec<i64> = rows
        .iter()
        .map(|r| {
            i64::try_from(r.version).map_err(|_| {
                RebuildError::Invariant(format!("cell version {} past 63 bits", r.version))
            })
        })
        .collect::<Result<_, _>>()?;
    let measures: Vec<[i64; DailyMeasures::COUNT]> =
        rows.iter().map(|r| r.measures().values()).collect();
    let arrays = measure_arrays(4);
    let version_at = DailyMeasures::COUNT + 4;
    let sql = format!(
        "INSERT INTO {CELLS_TABLE} ({cols})
         SELECT * FROM unnest($1::date[], $2::text[], $3::text[], {arrays}, ${version_at}::int8[])",
        cols = totals_columns()
    );
    let mut q = sqlx::query(&sql)
        .bind(&days)
        .bind(&merchants)
        .bind(&currencies);
    for i in 0..DailyMeasures::COUNT {
        q = q.bind(measures.iter().map(|m| m[i]).collect::<Vec<i64>>());
    }
    q.bind(&versions).execute(pool).await?;
    Ok(())
}
