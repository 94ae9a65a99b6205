-- The ingest's durable state. It lives here, not in ClickHouse, because it
-- must change in the same transaction that consumes outbox rows: that is
-- what makes the pipeline exactly-once (see ARCHITECTURE.md, "Ingest").

-- Running totals per (reporting day, merchant, currency). ClickHouse
-- receives absolute values from this table, tagged with `version`, so a
-- repeated or late push can never double-count.
CREATE TABLE ingest_daily_totals (
    day              date NOT NULL,
    merchant_id      text NOT NULL,
    currency         char(3) NOT NULL,
    orders_placed    bigint NOT NULL,
    gross_minor      bigint NOT NULL,
    captured_minor   bigint NOT NULL,
    refunded_minor   bigint NOT NULL,
    orders_cancelled bigint NOT NULL,
    items_sold       bigint NOT NULL,
    version          bigint NOT NULL,
    PRIMARY KEY (day, merchant_id, currency)
) WITH (fillfactor = 80);

-- Versions come from one sequence, drawn while the row lock is held, so a
-- later state of a cell always has a larger version than an earlier one,
-- whichever worker wrote it.
CREATE SEQUENCE ingest_version_seq AS bigint;

-- Cells whose new totals are committed here but maybe not yet in
-- ClickHouse. A worker deletes its row after the push; any worker re-pushes
-- rows left behind by a crash (re-pushing is harmless).
CREATE TABLE ingest_pending_pushes (
    batch_id          uuid PRIMARY KEY,
    days              date[] NOT NULL,
    merchant_ids      text[] NOT NULL,
    currencies        text[] NOT NULL,
    oldest_created_at timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Events that could not be decoded or projected, kept with the error until
-- an operator retries them.
CREATE TABLE ingest_dead_letters (
    outbox_id         bigint PRIMARY KEY,
    event_id          uuid NOT NULL,
    aggregate_id      uuid NOT NULL,
    aggregate_version integer NOT NULL,
    event_type        text NOT NULL,
    schema_version    smallint NOT NULL,
    occurred_at       timestamptz NOT NULL,
    payload           jsonb NOT NULL,
    created_at        timestamptz NOT NULL,
    error             text NOT NULL,
    failed_at         timestamptz NOT NULL DEFAULT now()
);
