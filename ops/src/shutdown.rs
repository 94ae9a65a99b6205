//! Shutdown is passed in, not discovered: every server and worker takes a
//! [`Shutdown`] and stops when it fires, the way mini-redis does.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal. Cancelling it asks every holder to finish
/// what is in flight and stop.
pub type Shutdown = CancellationToken;

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn os_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT, shutting down"),
        () = term => tracing::info!("received SIGTERM, shutting down"),
    }
}
