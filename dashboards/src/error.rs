//! Every way a read request fails, mapped to problem details in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tally_ops::Problem;
use tally_ops::problem::InvalidParam;

#[derive(Debug, thiserror::Error)]
pub enum DashError {
    #[error("invalid query")]
    Invalid(Vec<InvalidParam>),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The aggregate holds something the ingest never writes.
    #[error("unexpected data: {0}")]
    Data(String),
    /// The read asked to include a write (a consistency token) that the
    /// read side had not projected within the wait it allowed.
    #[error("not yet consistent with the token after {waited_ms} ms")]
    NotYetConsistent { waited_ms: u64, max_wait_secs: u64 },
    /// No projected order has this id (as of `complete_up_to`).
    #[error("order {id} not found")]
    OrderNotFound {
        id: String,
        complete_up_to: Option<String>,
    },
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        match self {
            DashError::Invalid(params) => {
                Problem::new(StatusCode::BAD_REQUEST, "validation", "Invalid query")
                    .detail(
                        params
                            .iter()
                            .map(|p| format!("{}: {}", p.name, p.reason))
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                    .invalid_params(params)
                    .into_response()
            }
            DashError::ClickHouse(e) => {
                tracing::error!(error = %tally_ops::error_chain(&e), "ClickHouse query failed");
                let mut res = Problem::unavailable("the analytics database").into_response();
                res.extensions_mut()
                    .insert(tally_ops::telemetry::ClickHouseFailure(
                        tally_ops::telemetry::kind_of(&e),
                    ));
                res
            }
            DashError::NotYetConsistent {
                waited_ms,
                max_wait_secs,
            } => Problem::new(
                StatusCode::TOO_EARLY,
                "not-yet-consistent",
                "The read side does not include that write yet",
            )
            .detail(format!(
                "waited {waited_ms} ms for the projections to include the write named by the \
                 consistency token; retry after Retry-After, or allow a longer wait with \
                 `Prefer: wait=<seconds>` (at most {max_wait_secs} s)"
            ))
            .retry_after(1)
            .into_response(),
            DashError::OrderNotFound { id, complete_up_to } => Problem::new(
                StatusCode::NOT_FOUND,
                "order-not-found",
                "No such order on the read side",
            )
            .detail(format!(
                "no order {id} is projected (the read side is complete up to {}); an order \
                 placed just now is found by passing its acknowledgement's \
                 Tally-Consistency-Token as `?after=`",
                complete_up_to.as_deref().unwrap_or("nothing yet")
            ))
            .into_response(),
            DashError::Data(what) => {
                tracing::error!(%what, "unexpected data in the aggregates");
                Problem::internal().into_response()
            }
        }
    }
}
