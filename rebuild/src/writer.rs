//! Streams the rebuild's rows into a shadow table as one `INSERT`.
//!
//! Each statement costs ClickHouse far more than its rows: ten 100 000-row
//! inserts of a year of facts took 3.1 s where one 1 000 000-row insert
//! took 1.3 s. One statement with `max_insert_block_size` and
//! `min_insert_block_size_rows` set (the latter squashes blocks, 1 M rows
//! by default) writes parts every `block_rows` rows as they arrive, so ClickHouse
//! works alongside the pass instead of after it (a single 1 M-row block
//! left it 0.6 s of work alone at the end). The writer runs on its own
//! task, so this process encodes rows while the pass reads PostgreSQL.

use std::time::Duration;

use clickhouse::{RowOwned, RowWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::RebuildError;

/// Rows per block ClickHouse writes (a part per partition each).
pub const BLOCK_ROWS: usize = 1_048_576;

/// Longest a chunk may take to reach the server, and the server to answer
/// a finished statement.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
const END_TIMEOUT: Duration = Duration::from_secs(300);

pub struct ShadowWriter<T> {
    tx: mpsc::Sender<Vec<T>>,
    task: JoinHandle<Result<u64, RebuildError>>,
}

impl<T> ShadowWriter<T>
where
    T: RowOwned + RowWrite + Send + Sync + 'static,
{
    /// Starts the writer; at most one chunk waits while another is written.
    pub fn start(ch: &clickhouse::Client, table: &str, block_rows: usize) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(write_all(
            ch.clone(),
            table.to_owned(),
            block_rows.max(1),
            rx,
        ));
        ShadowWriter { tx, task }
    }

    /// Hands a chunk over; waits while the previous one is still queued.
    pub async fn send(&mut self, chunk: Vec<T>) -> Result<(), RebuildError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.tx.send(chunk).await.is_err() {
            // The writer has stopped: only an error stops it early.
            return match (&mut self.task).await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(RebuildError::Invariant(
                    "shadow writer stopped before its input ended".into(),
                )),
                Err(e) => Err(RebuildError::Invariant(format!(
                    "shadow writer failed: {e}"
                ))),
            };
        }
        Ok(())
    }

    /// Ends the last statement; returns the rows written.
    pub async fn finish(self) -> Result<u64, RebuildError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| RebuildError::Invariant(format!("shadow writer failed: {e}")))?
    }
}

async fn write_all<T>(
    ch: clickhouse::Client,
    table: String,
    block_rows: usize,
    mut rx: mpsc::Receiver<Vec<T>>,
) -> Result<u64, RebuildError>
where
    T: RowOwned + RowWrite,
{
    let mut insert = None;
    let mut written = 0u64;
    while let Some(chunk) = rx.recv().await {
        let i = match &mut insert {
            Some(i) => i,
            None => insert.insert(
                ch.insert::<T>(&table)
                    .await?
                    .with_setting("max_insert_block_size", block_rows.to_string())
                    .with_setting("min_insert_block_size_rows", block_rows.to_string())
                    .with_timeouts(Some(SEND_TIMEOUT), Some(END_TIMEOUT)),
            ),
        };
        for row in &chunk {
            i.write(row).await?;
        }
        written += chunk.len() as u64;
    }
    if let Some(i) = insert {
        i.end().await?;
    }
    Ok(written)
}
