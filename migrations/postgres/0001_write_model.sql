-- The normalised write model. Timestamps are the event times the domain
-- recorded, so the rebuild can recompute every daily figure from these
-- tables alone. Money is bigint minor units; the currency is the order's.

CREATE TABLE addresses (
    address_id  uuid PRIMARY KEY,
    name        text NOT NULL,
    line1       text NOT NULL,
    line2       text,
    city        text NOT NULL,
    region      text,
    postal_code text NOT NULL,
    country     char(2) NOT NULL
);

CREATE TABLE orders (
    order_id            uuid PRIMARY KEY,
    merchant_id         text NOT NULL,
    customer_id         text NOT NULL,
    currency            char(3) NOT NULL,
    status              text NOT NULL CHECK (status IN ('placed', 'paid', 'shipped', 'cancelled')),
    total_minor         bigint NOT NULL CHECK (total_minor > 0),
    item_count          bigint NOT NULL CHECK (item_count > 0),
    shipping_address_id uuid NOT NULL REFERENCES addresses,
    version             integer NOT NULL CHECK (version >= 1),
    placed_at           timestamptz NOT NULL,
    cancelled_at        timestamptz,
    cancel_reason       text,
    updated_at          timestamptz NOT NULL,
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);
CREATE INDEX orders_merchant_placed_at ON orders (merchant_id, placed_at);

CREATE TABLE order_items (
    order_id         uuid NOT NULL REFERENCES orders,
    line_no          smallint NOT NULL CHECK (line_no BETWEEN 1 AND 100),
    sku              text NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price_minor bigint NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- At most one capture per order (the domain's "capture once").
CREATE TABLE payments (
    payment_id   uuid PRIMARY KEY,
    order_id     uuid NOT NULL UNIQUE REFERENCES orders,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    captured_at  timestamptz NOT NULL
);

CREATE TABLE shipments (
    shipment_id     uuid PRIMARY KEY,
    order_id        uuid NOT NULL UNIQUE REFERENCES orders,
    carrier         text NOT NULL,
    tracking_number text NOT NULL,
    shipped_at      timestamptz NOT NULL
);

-- Refunds requested by a client and refunds recorded by a cancellation.
CREATE TABLE refunds (
    refund_id    uuid PRIMARY KEY,
    order_id     uuid NOT NULL REFERENCES orders,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    cause        text NOT NULL CHECK (cause IN ('requested', 'cancellation')),
    reason       text,
    refunded_at  timestamptz NOT NULL
);
CREATE INDEX refunds_order_id ON refunds (order_id);

-- The transactional outbox: one row per domain event, written in the same
-- transaction as the rows above. `created_at` is clock_timestamp(), taken
-- when the row is written, which is never earlier than the writing
-- transaction's start: the freshness watermark relies on that.
CREATE TABLE outbox (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          uuid NOT NULL,
    aggregate_id      uuid NOT NULL,
    aggregate_version integer NOT NULL CHECK (aggregate_version >= 1),
    event_type        text NOT NULL,
    schema_version    smallint NOT NULL,
    occurred_at       timestamptz NOT NULL,
    payload           jsonb NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- min(created_at) bounds the freshness watermark; ids do not, because
-- identity values commit out of order.
CREATE INDEX outbox_created_at ON outbox (created_at);

-- Wake ingest workers once per writing statement; NOTIFY is delivered at
-- commit and collapsed within a transaction, so it costs one message per
-- command, not per row.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tally_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- API keys are stored as SHA-256 of the whole key: keys are 256-bit random,
-- so a fast hash is enough and lets every request authenticate with one
-- index lookup.
CREATE TABLE api_keys (
    key_id     uuid PRIMARY KEY,
    name       text NOT NULL,
    key_hash   bytea NOT NULL UNIQUE,
    roles      text[] NOT NULL CHECK (roles <@ ARRAY['orders:write', 'finance:read', 'ops:admin']),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Idempotency-Key records, scoped to the API key that sent them. A row with
-- a NULL response_status is a request still in flight.
CREATE TABLE idempotency_keys (
    api_key_id      uuid NOT NULL REFERENCES api_keys,
    idempotency_key text NOT NULL,
    request_hash    bytea NOT NULL,
    response_status smallint,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, idempotency_key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
