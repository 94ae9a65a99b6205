//! The freshness watermark as readers see it: published by the ingest to
//! ClickHouse (`ingest_watermark`), read by the dashboards and by
//! reconciliation, and the consistency token a client reads its own write
//! with. How it is computed is the ingest's (`ingest::watermark`).

use time::OffsetDateTime;

/// The watermark as published to ClickHouse, what readers go by (`None`:
/// the ingest has never published one).
pub async fn published(
    ch: &clickhouse::Client,
) -> Result<Option<OffsetDateTime>, clickhouse::error::Error> {
    Ok(instant(published_micros(ch).await?))
}

/// A watermark in microseconds as an instant (`None`: never published).
pub fn instant(us: i64) -> Option<OffsetDateTime> {
    if us <= 0 {
        None
    } else {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok()
    }
}

/// The published watermark in microseconds since the epoch (0: never
/// published), what a [`ConsistencyToken`] is compared with.
pub async fn published_micros(ch: &clickhouse::Client) -> Result<i64, clickhouse::error::Error> {
    ch.query("SELECT max(watermark_us) FROM ingest_watermark")
        .fetch_one()
        .await
}

/// Whether this replica has fetched every insert its peers logged for the
/// tables the watermark vouches for (always, where the tables are not
/// replicated). Each table replicates on its own: a replica the ingest
/// does not write to may hold the newest watermark before the rows it
/// covers, so a reader there trusts a watermark only if, read *after* it,
/// this says yes. In `system.replicas`, a replica has pulled the whole
/// replication log when `log_pointer` is past `log_max_index` (both 0:
/// no entry yet), and fetched what it pulled when no insert is queued.
pub async fn replica_caught_up(ch: &clickhouse::Client) -> Result<bool, clickhouse::error::Error> {
    let behind: u64 = ch
        .query(
            "SELECT count() FROM system.replicas
             WHERE database = currentDatabase() AND table IN ?
               AND (inserts_in_queue > 0
                    OR (log_pointer <= log_max_index AND NOT (log_pointer = 0 AND log_max_index = 0)))",
        )
        .bind(crate::rows::PROJECTED_TABLES)
        .fetch_one()
        .await?;
    Ok(behind == 0)
}

/// What a command's acknowledgement gives its client to read its own write:
/// the instant its outbox row was written (`outbox.created_at`, to the
/// microsecond). The read side is complete up to it once the published
/// watermark is past it, because every event written before the watermark
/// is projected (`ingest::watermark`). Clients treat it as opaque text; the
/// `1.` prefix versions the encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsistencyToken(i64);

impl ConsistencyToken {
    /// The response (and request) header that carries it.
    pub const HEADER: &'static str = "tally-consistency-token";

    pub fn from_micros(us: i64) -> Self {
        ConsistencyToken(us)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// Whether a read side whose published watermark is `watermark_us`
    /// includes the write this token came from.
    pub fn is_covered_by(self, watermark_us: i64) -> bool {
        watermark_us > self.0
    }
}

impl std::fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "1.{:x}", self.0)
    }
}

impl std::str::FromStr for ConsistencyToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix("1.")
            .filter(|hex| !hex.is_empty() && hex.len() <= 16)
            .and_then(|hex| i64::from_str_radix(hex, 16).ok())
            .filter(|us| *us > 0)
            .map(ConsistencyToken)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a consistency token: send the `Tally-Consistency-Token` of a \
                     command's acknowledgement unchanged"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_order_like_the_instants_they_name() {
        let early = ConsistencyToken::from_micros(1_764_000_000_000_001);
        let late = ConsistencyToken::from_micros(1_764_000_000_000_002);
        assert_eq!(early.to_string().parse::<ConsistencyToken>(), Ok(early));
        assert!(early < late);
        assert!(early.is_covered_by(late.micros()));
        assert!(
            !late.is_covered_by(late.micros()),
            "the watermark must be past it"
        );
        for bad in [
            "",
            "1.",
            "2.abc",
            "1.xyz",
            "1.-5",
            "1.0",
            "1.00000000000000001",
        ] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad:?}");
        }
    }
}
