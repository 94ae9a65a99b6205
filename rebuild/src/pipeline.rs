//! Chunked work that overlaps its stores: the next chunk is read on a task
//! of its own while the caller works on the current one, so at most two
//! chunks are in memory. Both comparisons (`facts.rs`, `daily.rs`) run on it.

use crate::RebuildError;

/// A chunk read (and turned into frames) while the previous one is being
/// compared; dropped, it stops reading.
pub(crate) type Prefetch<T> = tokio_util::task::AbortOnDropHandle<Result<T, RebuildError>>;

pub(crate) async fn prefetched<T>(p: Prefetch<T>) -> Result<T, RebuildError> {
    p.await
        .map_err(|e| RebuildError::Invariant(format!("chunk reader failed: {e}")))?
}

/// The one chunked comparison loop, for facts and cells alike: chunk `i + 1`
/// is read (by `fetch`, on a task of its own) while the caller compares
/// chunk `i`, so ClickHouse, PostgreSQL and polars overlap and at most two
/// chunks per side are in memory.
pub(crate) struct Pipelined<'a, P, T, F> {
    plan: &'a [P],
    fetch: F,
    next: Option<Prefetch<T>>,
    at: usize,
}

impl<'a, P, T, F: Fn(&P) -> Prefetch<T>> Pipelined<'a, P, T, F> {
    pub(crate) fn new(plan: &'a [P], fetch: F) -> Self {
        let next = plan.first().map(&fetch);
        Pipelined {
            plan,
            fetch,
            next,
            at: 0,
        }
    }

    /// The next chunk, once read; the one after it starts reading now.
    pub(crate) async fn next(&mut self) -> Option<Result<T, RebuildError>> {
        let chunk = self.next.take()?;
        let got = prefetched(chunk).await;
        self.at += 1;
        self.next = self.plan.get(self.at).map(&self.fetch);
        Some(got)
    }
}
