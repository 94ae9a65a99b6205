//! The read model's vocabulary, in one place for every crate that writes or
//! reads it: the ClickHouse row types (`rows`), the reporting zone and the
//! projection rules applied to events (`rows::project`), the deployment's
//! recorded settings (`deployment`), and the published watermark
//! (`watermark`). The ingest applies the rules event by event, the rebuild
//! from the write store, the dashboards only read; none of them depends on
//! another for these.
//!
//! Still in `ingest` and due here (issue "a house a newcomer can live in"):
//! the running-totals table and the seam protocol with the rebuild.

pub mod deployment;
pub mod rows;
pub mod watermark;

pub use rows::{CellKey, DailyRow, FactRow, Projected, ReportingZone, WatermarkRow, project};
