-- Cells where the ingest's running totals differed from the rebuild at its
-- snapshot: the only ones a swap must rewrite in ingest_daily_totals, so
-- the ingest is held for milliseconds, not for a pass over every cell.
CREATE UNLOGGED TABLE rebuild_totals_drift (
    day         date NOT NULL,
    merchant_id text NOT NULL,
    currency    char(3) NOT NULL,
    PRIMARY KEY (day, merchant_id, currency)
);
