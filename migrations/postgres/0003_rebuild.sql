-- Rebuild and verification state (issue #5; ARCHITECTURE.md, "Rebuild").

-- One row per rebuild, verification or rollback, whoever started it.
-- `journaling` tells the ingest to copy every event it consumes into
-- rebuild_journal: while a run builds (its catch-up) and, after a swap,
-- until the next successful one (its rollback window).
CREATE TABLE rebuild_runs (
    run_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('rebuild', 'verify', 'rollback')),
    trigger       text NOT NULL,
    state         text NOT NULL CHECK (state IN ('building', 'swapping', 'swapped', 'verified',
                                                 'failed', 'skipped', 'rolled_back')),
    journaling    boolean NOT NULL DEFAULT false,
    -- Journal rows after this sequence number belong to this run.
    journal_from  bigint NOT NULL DEFAULT 0,
    snapshot      text,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    orders        bigint,
    cells         bigint,
    drift_rows    bigint,
    drift         jsonb,
    swapped       boolean NOT NULL DEFAULT false,
    message       text,
    host          text NOT NULL
);

CREATE INDEX rebuild_runs_journaling ON rebuild_runs (run_id) WHERE journaling;
CREATE INDEX rebuild_runs_swapping ON rebuild_runs (run_id) WHERE state = 'swapping';

-- Events the ingest consumed while a run needed them, in outbox shape.
CREATE TABLE rebuild_journal (
    seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id         bigint NOT NULL,
    event_id          uuid NOT NULL,
    aggregate_id      uuid NOT NULL,
    aggregate_version integer NOT NULL,
    event_type        text NOT NULL,
    schema_version    smallint NOT NULL,
    occurred_at       timestamptz NOT NULL,
    payload           jsonb NOT NULL,
    created_at        timestamptz NOT NULL
);

-- The daily cells a run computed from the write store, then moved forward
-- by the journal: the shape of ingest_daily_totals by construction, since
-- the same statements write both and a swap copies one into the other.
-- Scratch space: unlogged, and a crash only fails the run.
CREATE UNLOGGED TABLE rebuild_cells (LIKE ingest_daily_totals INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
