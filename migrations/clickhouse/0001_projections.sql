-- Read-side projections. Both are ReplacingMergeTree on a version column:
-- the ingest only ever writes whole rows with a version, so inserting the
-- same row twice, or an older one late, cannot change what readers see
-- (readers use FINAL or argMax by version).

CREATE TABLE IF NOT EXISTS order_facts (
    order_id       UUID,
    version        UInt32,
    merchant_id    String,
    customer_id    String,
    currency       FixedString(3),
    status         String,
    placed_at      DateTime('UTC'),
    placed_day     Date,
    item_count     UInt64,
    total_minor    Int64,
    captured_minor Int64,
    refunded_minor Int64,
    updated_at     DateTime('UTC')
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(placed_day)
ORDER BY (merchant_id, order_id);

CREATE TABLE IF NOT EXISTS daily_revenue (
    day              Date,
    merchant_id      String,
    currency         FixedString(3),
    orders_placed    Int64,
    gross_minor      Int64,
    captured_minor   Int64,
    refunded_minor   Int64,
    orders_cancelled Int64,
    items_sold       Int64,
    version          UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (day, merchant_id, currency);

-- "Complete up to": every event written to the outbox before `watermark_us`
-- (microseconds since the epoch, PostgreSQL's clock) is in the projections.
-- Only ever grows; readers take max().
CREATE TABLE IF NOT EXISTS ingest_watermark (
    stream       String,
    watermark_us Int64,
    recorded_at  DateTime('UTC')
) ENGINE = ReplacingMergeTree(watermark_us)
ORDER BY stream;
