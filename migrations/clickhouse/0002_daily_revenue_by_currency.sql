-- daily_revenue re-keyed by (currency, day, merchant_id). Every finance
-- view asks for one currency over a range of days, so with currency first
-- ClickHouse reads only that currency's rows of those days instead of every
-- row of those days (a third, with three currencies), and ranks merchants
-- within it without filtering.
--
-- ORDER BY cannot be changed in place, so the table is copied and renamed.
-- Re-runnable at any point, and safe with an ingest still writing: rows
-- carry their version, so copying a row twice changes nothing readers see
-- (ReplacingMergeTree, read with FINAL); rows written to the old table after
-- the first copy are copied again after the rename; an insert that finds no
-- table during the rename fails and is retried by the ingest.

CREATE TABLE IF NOT EXISTS daily_revenue_v2 (
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
ORDER BY (currency, day, merchant_id);

-- tally: unless-table-exists daily_revenue_v1
INSERT INTO daily_revenue_v2 SELECT * FROM daily_revenue;

-- tally: unless-table-exists daily_revenue_v1
RENAME TABLE daily_revenue TO daily_revenue_v1, daily_revenue_v2 TO daily_revenue;

-- tally: if-table-exists daily_revenue_v1
INSERT INTO daily_revenue SELECT * FROM daily_revenue_v1;

DROP TABLE IF EXISTS daily_revenue_v1;

DROP TABLE IF EXISTS daily_revenue_v2;

-- The rebuild's copies have the old key and cannot exchange partitions with
-- the new table: shadow and frozen copies are made afresh by every run; the
-- previous projection (for `tally rebuild rollback`) does not survive this
-- migration.
DROP TABLE IF EXISTS daily_revenue_shadow;

DROP TABLE IF EXISTS daily_revenue_frozen;

DROP TABLE IF EXISTS daily_revenue_previous;
