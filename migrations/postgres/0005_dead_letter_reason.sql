-- Why an event was parked, as a closed set an operator can group by and a
-- metric can carry: 'decode' (the payload is not an event this build
-- reads), 'overflow' (a daily cell would leave 64 bits), 'data' (PostgreSQL
-- refused a value: SQLSTATE class 22), 'constraint' (class 23). `error`
-- keeps the full message.
ALTER TABLE ingest_dead_letters
    ADD COLUMN reason text NOT NULL DEFAULT 'decode'
        CHECK (reason IN ('decode', 'overflow', 'data', 'constraint'));
