//! The read model and the seam, in one place for every crate that writes
//! or reads it: the ClickHouse row types and the projection rules applied
//! to events (`rows`), the reporting zone as the deployment records it
//! (`deployment`), the running totals (`totals`), the protocol between the
//! ingest and a rebuild (`seam`), the one way rows reach ClickHouse
//! (`insert`), and the published watermark (`watermark`). The ingest
//! applies the rules event by event, the rebuild from the write store, the
//! dashboards only read; none of them depends on another.

pub mod deployment;
pub mod insert;
pub mod rows;
pub mod seam;
pub mod totals;
pub mod watermark;

pub use insert::{InsertError, insert_facts, insert_rows};
pub use rows::{
    CellKey, DailyRow, FACT_TABLES, FactRow, FactTable, PROJECTED_TABLES, Projected, ReportingZone,
    WatermarkRow, project,
};
