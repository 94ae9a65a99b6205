//! How a run is asked for: its mode and options. Apart from `run/`, so that
//! the comparisons (`facts.rs`, `daily.rs`) can read the options without
//! importing the run that calls them.

use std::path::PathBuf;

use tally_projection::ReportingZone;

use crate::progress::ProgressMode;
use crate::writer::BLOCK_ROWS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Build and compare; never swap.
    Verify,
    /// Build, compare, and swap if drift was found.
    Repair,
    /// Build, compare and swap.
    Rebuild,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub zone: ReportingZone,
    /// Who started it (`cli`, `schedule`): recorded in the history.
    pub trigger: String,
    pub progress: ProgressMode,
    /// Most rows per side held in memory by one comparison chunk.
    pub chunk_rows: usize,
    /// Rows per block ClickHouse writes while building (a part per
    /// partition each).
    pub insert_rows: usize,
    /// Every differing row, as CSV.
    pub report_file: Option<PathBuf>,
    /// `zone` is to become the deployment's reporting zone: the swap
    /// records it (see [`ZoneChange`]). Without it, a run in another zone
    /// than the recorded one is refused at the swap.
    pub change_zone: bool,
}

impl RunOptions {
    /// Daily cells summed in memory before partial sums go to PostgreSQL:
    /// five comparison chunks' worth (about 80 bytes a cell), so
    /// `--chunk-rows` stays the one memory knob.
    pub fn cells_in_memory(&self) -> usize {
        self.chunk_rows.saturating_mul(5)
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            zone: ReportingZone::utc(),
            trigger: "cli".into(),
            progress: ProgressMode::Log,
            chunk_rows: 200_000,
            insert_rows: BLOCK_ROWS,
            report_file: None,
            change_zone: false,
        }
    }
}
