//! Outbox backlog drain by ingest workers against PostgreSQL alone
//! claiming and deleting the same rows with the same statement.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tally_domain::{
    Amount, CountryCode, Currency, CustomerId, EventEnvelope, EventId, LineItem, LineItems,
    MerchantId, Order, OrderCommand, OrderId, PaymentId, PlaceOrder, Quantity, RefundId, Sku, Text,
    order,
};
use tally_ops::ChSettings;
use tally_ops::flags::StoreFlags;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::harness::{Summary, record_result, servers, stat};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backlog {
    Chronological,
    Scattered,
}

impl std::fmt::Display for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backlog::Chronological => "chronological",
            Backlog::Scattered => "scattered",
        })
    }
}

/// Orders spread over merchants, currencies and 30 days; each order gives
/// 1 to 3 events (placed, captured, refunded), like real traffic. In
/// generation order an order's events follow each other but its day is
/// drawn at random; [`Backlog::Chronological`] sorts them by time, as
/// commits fill an outbox.
fn synthetic_events(n: usize, seed: u64, backlog: Backlog) -> Vec<EventEnvelope> {
    let mut out = Vec::with_capacity(n);
    let start = OffsetDateTime::now_utc() - time::Duration::days(30);
    let currencies = ["EUR", "USD", "JPY"].map(|c| Currency::parse(c).unwrap());
    let address = tally_domain::Address {
        name: Text::parse("Bench Customer").unwrap(),
        line1: Text::parse("1 Load St").unwrap(),
        line2: None,
        city: Text::parse("Benchville").unwrap(),
        region: None,
        postal_code: Text::parse("00000").unwrap(),
        country: CountryCode::parse("DE").unwrap(),
    };
    let mut i: u64 = seed;
    while out.len() < n {
        i += 1;
        let id = OrderId::from_uuid(Uuid::from_u128(u128::from(i) | (u128::from(seed) << 64)));
        let at = start + time::Duration::seconds((i * 7919 % (30 * 86_400)) as i64);
        let cmd = PlaceOrder {
            order_id: id,
            merchant_id: MerchantId::parse(&format!("m{}", i % 1000)).unwrap(),
            customer_id: CustomerId::parse(&format!("c{}", i % 50_000)).unwrap(),
            currency: currencies[(i % 3) as usize],
            items: LineItems::parse(vec![LineItem {
                sku: Sku::parse("sku-1").unwrap(),
                quantity: Quantity::parse(1 + (i % 3) as i64).unwrap(),
                unit_price: Amount::parse(100 + (i % 9_900) as i64).unwrap(),
            }])
            .unwrap(),
            shipping_address: address.clone(),
        };
        let placed = order::place(&cmd).unwrap();
        let mut state = Order::from_placed(id, &placed, at).unwrap();
        out.push(EventEnvelope::record(
            EventId::from_uuid(Uuid::now_v7()),
            at,
            placed,
            state.clone(),
        ));
        if i % 10 < 8 && out.len() < n {
            let e = state
                .handle(&OrderCommand::CapturePayment {
                    payment_id: PaymentId::from_uuid(Uuid::now_v7()),
                    amount: state.total,
                })
                .unwrap();
            state.apply(&e);
            out.push(EventEnvelope::record(
                EventId::from_uuid(Uuid::now_v7()),
                at + time::Duration::hours(1),
                e,
                state.clone(),
            ));
            if i.is_multiple_of(10) && out.len() < n {
                let e = state
                    .handle(&OrderCommand::Refund {
                        refund_id: RefundId::from_uuid(Uuid::now_v7()),
                        amount: Amount::parse(50).unwrap(),
                        reason: None,
                    })
                    .unwrap();
                state.apply(&e);
                out.push(EventEnvelope::record(
                    EventId::from_uuid(Uuid::now_v7()),
                    at + time::Duration::days(1),
                    e,
                    state.clone(),
                ));
            }
        }
    }
    if backlog == Backlog::Chronological {
        out.sort_by_key(|e| e.occurred_at); // stable: an order's events keep their order
    }
    out
}

/// Writes `events` once to an unlogged staging table, from which [`refill`]
/// copies them into the outbox for every measurement: sending 1 M JSON
/// payloads from the client each time cost more than the drains themselves.
async fn stage(pool: &PgPool, events: &[EventEnvelope]) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE UNLOGGED TABLE IF NOT EXISTS bench_outbox_staged (
             n bigserial PRIMARY KEY, event_id uuid, aggregate_id uuid, aggregate_version int4,
             event_type text, occurred_at timestamptz, payload jsonb)",
    )
    .execute(pool)
    .await?;
    sqlx::query("TRUNCATE bench_outbox_staged")
        .execute(pool)
        .await?;
    for chunk in events.chunks(10_000) {
        let ids: Vec<Uuid> = chunk.iter().map(|e| e.event_id.as_uuid()).collect();
        let aggs: Vec<Uuid> = chunk.iter().map(|e| e.aggregate_id.as_uuid()).collect();
        let versions: Vec<i32> = chunk
            .iter()
            .map(|e| e.aggregate_version.get() as i32)
            .collect();
        let types: Vec<&str> = chunk
            .iter()
            .map(tally_domain::EventEnvelope::event_type)
            .collect();
        let at: Vec<OffsetDateTime> = chunk.iter().map(|e| e.occurred_at).collect();
        let payloads: Vec<String> = chunk.iter().map(|e| e.payload_json().to_string()).collect();
        sqlx::query(
            "INSERT INTO bench_outbox_staged (event_id, aggregate_id, aggregate_version, event_type, occurred_at, payload)
             SELECT e, a, v, t, o, p::jsonb
             FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::timestamptz[], $6::text[]) AS u(e, a, v, t, o, p)",
        )
        .bind(&ids)
        .bind(&aggs)
        .bind(&versions)
        .bind(&types)
        .bind(&at)
        .bind(&payloads)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Fills the outbox with the staged events, in their order.
async fn refill(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, aggregate_version, event_type, schema_version, occurred_at, payload)
         SELECT event_id, aggregate_id, aggregate_version, event_type, 1, occurred_at, payload
         FROM bench_outbox_staged ORDER BY n",
    )
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    Ok(())
}

/// The baseline: PostgreSQL alone claiming, reading and deleting the rows,
/// with the very statement the worker uses, rows fetched to the client.
async fn baseline_drain(pool: &PgPool, batch_size: i64) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        type Row = (
            i64,
            Uuid,
            Uuid,
            i32,
            String,
            i16,
            OffsetDateTime,
            String,
            OffsetDateTime,
        );
        let rows: Vec<Row> = sqlx::query_as(tally_projection::seam::CLAIM_SQL)
            .bind(batch_size)
            .fetch_all(pool)
            .await?;
        if rows.is_empty() {
            return Ok(total);
        }
        total += rows.len();
    }
}

/// Empties every projection and the ingest state between runs.
async fn reset(pool: &PgPool, ch: &ChSettings) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE outbox, ingest_daily_totals, ingest_pending_pushes, ingest_dead_letters")
        .execute(pool)
        .await?;
    // Partition by partition, not TRUNCATE: that is what replicated
    // tables replicate on every version.
    let facts = tally_projection::FACT_TABLES.map(|t| t.live);
    for t in facts.iter().chain(&["daily_revenue", "ingest_watermark"]) {
        let ids: Vec<String> = ch
            .client()
            .query("SELECT DISTINCT partition_id FROM system.parts WHERE database = currentDatabase() AND table = ? AND active")
            .bind(*t)
            .fetch_all()
            .await?;
        for id in ids {
            ch.client()
                .query(&format!("ALTER TABLE {t} DROP PARTITION ID '{id}'"))
                .execute()
                .await?;
        }
    }
    Ok(())
}

async fn outbox_bytes(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_total_relation_size('outbox')")
            .fetch_one(pool)
            .await?,
    )
}

pub async fn drain(
    g: &StoreFlags,
    n: usize,
    workers: usize,
    batch_size: i64,
    backlog: Backlog,
    runs: usize,
    record: Option<PathBuf>,
) -> anyhow::Result<Vec<Summary>> {
    let s = servers(g, 1.0 + 1.5 * n as f64 / 1e6).await?;
    let pool = s.pg.connect().await.context("connecting to PostgreSQL")?;
    s.migrate(&pool).await?;
    eprintln!("generating {n} events …");
    let events = synthetic_events(n, 1, backlog);
    let expected = events.iter().fold((0, 0, 0), |acc, e| {
        let d = tally_domain::DailyMeasures::of_event(&e.event);
        (
            acc.0 + d.orders_placed,
            acc.1 + d.captured_minor,
            acc.2 + d.refunded_minor,
        )
    });
    stage(&pool, &events).await?;
    drop(events);
    let (mut base, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut sizes = Vec::new();
    for run in 1..=runs {
        reset(&pool, &s.ch).await?;
        refill(&pool).await?;
        let t = Instant::now();
        let drained = baseline_drain(&pool, batch_size).await?;
        let b = drained as f64 / t.elapsed().as_secs_f64();

        reset(&pool, &s.ch).await?;
        refill(&pool).await?;
        let before = outbox_bytes(&pool).await?;
        let mut registry = Registry::default();
        let metrics = tally_ingest::Metrics::register(&mut registry);
        let t = Instant::now();
        let tasks: Vec<_> = (0..workers)
            .map(|i| {
                let config = tally_ingest::IngestConfig {
                    batch_size,
                    claim_from: tally_ingest::ClaimFrom::alternating(i),
                    ..Default::default()
                };
                let mut w = tally_ingest::Worker::on_replicas(
                    pool.clone(),
                    s.writers(),
                    config,
                    metrics.clone(),
                );
                tokio::spawn(async move { w.drain().await })
            })
            .collect();
        let mut projected = 0;
        for task in tasks {
            projected += task.await??.projected;
        }
        let o = projected as f64 / t.elapsed().as_secs_f64();
        anyhow::ensure!(
            projected == n,
            "the workers projected {projected} of {n} events"
        );
        // Counted exactly once: the projection's totals equal the events'.
        let live: (i64, i64, i64) = s
            .ch
            .client()
            .query("SELECT sum(orders_placed), sum(captured_minor), sum(refunded_minor) FROM daily_revenue FINAL")
            .fetch_one()
            .await?;
        anyhow::ensure!(
            live == expected,
            "projected totals {live:?} differ from the events' {expected:?}"
        );
        sqlx::query("VACUUM outbox").execute(&pool).await?;
        let after = outbox_bytes(&pool).await?;
        sizes.push((before, after));
        eprintln!(
            "run {run}/{runs}: PostgreSQL alone {b:.0} events/s, ingest {o:.0} events/s ({:.0} %)",
            100.0 * o / b
        );
        base.push(b);
        ours.push(o);
        ratios.push(o / b);
    }
    let (b, o, r) = (stat(base), stat(ours), stat(ratios));
    let (before, after) = sizes[sizes.len() - 1];
    let mut table = String::new();
    writeln!(
        table,
        "| figure | tally | baseline (PostgreSQL alone) | ratio | target |"
    )?;
    writeln!(table, "|---|---|---|---|---|")?;
    writeln!(
        table,
        "| outbox drain, {n} events ({backlog}), {workers} worker(s), batches of {batch_size}, events/s | {} | {} | {:.0} % ({:.0}–{:.0} %) | ≥ 70 % and ≥ 50 000/s |",
        o.show(0, 1.0),
        b.show(0, 1.0),
        100.0 * r.median,
        100.0 * r.min,
        100.0 * r.max
    )?;
    writeln!(
        table,
        "| outbox size before → after drain + VACUUM | {:.1} MiB → {:.1} MiB | | | no bloat |",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    )?;
    println!("{table}");
    record_result(
        record.as_deref(),
        "drain",
        &format!(
            "{runs} runs; medians with min–max. Command: `tally-bench drain --events {n} --runs {runs} --workers {workers} --batch-size {batch_size} --backlog {backlog}` (release build)."
        ),
        &table,
    )?;
    s.stop().await;
    Ok(vec![Summary {
        figure: format!("outbox drain, {n} events: ingest vs PostgreSQL alone"),
        result: format!(
            "{} vs {} events/s = **{} %**",
            o.show(0, 1.0),
            b.show(0, 1.0),
            r.show(0, 100.0)
        ),
        target: "≥ 70 % and ≥ 50 000/s".into(),
    }])
}
