-- Settings that change what a figure means (today: the reporting zone,
-- whose midnight separates reporting days) belong to the deployment, not
-- to whichever process an operator starts. Recorded once, when the
-- deployment is created; changed only by `tally rebuild
-- --change-reporting-zone`, in the same transaction that switches the
-- ingest's running totals to the new calendar.
CREATE TABLE deployment_settings (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text NOT NULL
);

-- Which calendar each run counted in, for `tally rebuild history` and so
-- that a run in another zone than the deployment's is never swapped in.
ALTER TABLE rebuild_runs ADD COLUMN reporting_zone text;
