//! The freshness watermark as readers see it: published by the ingest to
//! ClickHouse (`ingest_watermark`), read by the dashboards and by
//! reconciliation. How it is computed is the ingest's (`ingest::watermark`).

use time::OffsetDateTime;

/// The watermark as published to ClickHouse, what readers go by (`None`:
/// the ingest has never published one).
pub async fn published(
    ch: &clickhouse::Client,
) -> Result<Option<OffsetDateTime>, clickhouse::error::Error> {
    let us: i64 = ch
        .query("SELECT max(watermark_us) FROM ingest_watermark")
        .fetch_one()
        .await?;
    Ok(if us <= 0 {
        None
    } else {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok()
    })
}
