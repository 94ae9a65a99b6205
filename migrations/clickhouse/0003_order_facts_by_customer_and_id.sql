-- The order queries' two other keys. ClickHouse reads a table fast only
-- along its sorting key, and `order_facts` is sorted by merchant, so a
-- customer's history or one order by id would read every row. Current
-- ClickHouse answers that with a projection (a re-sorted copy of each part);
-- 18.16 has none, so these are the same copy by hand: the same columns and
-- rows, sorted by customer and by order id. The ingest writes every fact
-- row to all three tables; a rebuild builds, verifies and swaps all three
-- (`tally_projection::rows::FACT_TABLES`).
--
-- The sorting key is also ReplacingMergeTree's deduplication key: an
-- order's customer never changes, so (customer_id, order_id) identifies an
-- order as (merchant_id, order_id) does.

-- `AS order_facts`: the same columns, by construction; only the key differs.
CREATE TABLE IF NOT EXISTS order_facts_by_customer AS order_facts
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(placed_day)
ORDER BY (customer_id, order_id);

CREATE TABLE IF NOT EXISTS order_facts_by_id AS order_facts
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(placed_day)
ORDER BY order_id;

-- Facts projected before this migration. Re-runnable: a row copied twice
-- is the same row at the same version, which readers see once. An ingest
-- of the previous release still running after this migration writes
-- `order_facts` only; the next rebuild (or `tally rebuild`) fills the gap,
-- and its verification names every row missing until then.
INSERT INTO order_facts_by_customer SELECT * FROM order_facts;

INSERT INTO order_facts_by_id SELECT * FROM order_facts;
