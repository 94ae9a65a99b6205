//! The reporting zone is the deployment's, recorded once in the write store
//! (`deployment_settings`), never each process's own.
//!
//! A process given no zone uses the recorded one; a process given another
//! one refuses to start, and a rebuild computed in another zone is never
//! swapped in (`rebuild::run::install`). Every ingest batch reads the
//! recorded zone after taking the seam lock (`batch.rs`), so that a change
//! made under the exclusive lock, together with the running totals, takes
//! effect between two batches: a batch counts wholly in one calendar.
//! The change is a rebuild in the new zone whose swap records it
//! (`tally rebuild --reporting-tz <zone> --change-reporting-zone`,
//! `rebuild::run`).

use sqlx::PgExecutor;

use crate::rows::ReportingZone;

/// The key of the reporting zone in `deployment_settings`.
pub const REPORTING_ZONE: &str = "reporting_zone";

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("reading the deployment's settings: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "this deployment reports in {recorded} (recorded in the write store when it was created), \
         but this process was given {given} (--reporting-tz or TALLY_REPORTING_TZ). Unset it to use \
         {recorded}: a process counting days in another calendar would mix two calendars in the \
         same figures. To change the deployment's zone, rebuild both projections in the new one: \
         `tally rebuild --reporting-tz {given} --change-reporting-zone`."
    )]
    Mismatch { recorded: String, given: String },
}

/// The recorded zone, if the deployment has one yet.
pub async fn recorded(db: impl PgExecutor<'_>) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM deployment_settings WHERE key = $1")
        .bind(REPORTING_ZONE)
        .fetch_optional(db)
        .await
}

/// The zone this process works in: the recorded one, recording `given`
/// (or UTC) first if the deployment has none yet. `given` must agree with
/// a recorded zone.
pub async fn resolve(
    db: &sqlx::PgPool,
    given: Option<&ReportingZone>,
    by: &str,
) -> Result<ReportingZone, ZoneError> {
    let first = given.cloned().unwrap_or_else(ReportingZone::utc);
    sqlx::query(
        "INSERT INTO deployment_settings (key, value, changed_by) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(REPORTING_ZONE)
    .bind(first.name())
    .bind(by)
    .execute(db)
    .await?;
    let recorded = recorded(db)
        .await?
        .ok_or_else(|| ZoneError::Invalid("the reporting zone was not recorded".into()))?;
    let zone = ReportingZone::parse(&recorded).map_err(ZoneError::Invalid)?;
    match given {
        Some(g) if !g.same_as(&zone) => Err(ZoneError::Mismatch {
            recorded: zone.name().to_owned(),
            given: g.name().to_owned(),
        }),
        _ => Ok(zone),
    }
}

/// Records `zone` as the deployment's, in the caller's transaction (the
/// swap's, under the seam lock).
pub async fn change(
    db: impl PgExecutor<'_>,
    zone: &ReportingZone,
    by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deployment_settings (key, value, changed_by) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE
             SET value = excluded.value, changed_at = now(), changed_by = excluded.changed_by",
    )
    .bind(REPORTING_ZONE)
    .bind(zone.name())
    .bind(by)
    .execute(db)
    .await?;
    Ok(())
}
