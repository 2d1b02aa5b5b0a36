//! The HTTP port (`--http-addr`, default 127.0.0.1:7381): what monitoring and orchestrators ask
//! of a member.
//!
//! - `GET /metrics`: every metric in OpenMetrics text (see [`crate::metrics`]); the disk's
//!   (the state file's and the log's sizes, the space left) are measured at each scrape.
//! - `GET /health`: 200 `ok` while the node thread runs and turns; 503 with why once it has
//!   stopped, or has not turned for seconds (stuck on a disk that does not answer).
//! - `GET /ready`: 200 `ready` when the member knows a leader and has applied everything it
//!   knows committed, so it can serve a linearizable read without waiting; else 503 with a
//!   one-line reason.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::core::Status;
use crate::metrics::{self, Metrics};
use crate::node::NodeHandle;

#[derive(Clone)]
struct Http {
    node: NodeHandle,
    metrics: Arc<Metrics>,
    /// Measured for the disk metrics at each scrape.
    data_dir: Arc<PathBuf>,
}

/// The routes of the HTTP port of a member whose data is in `data_dir`.
pub fn router(node: NodeHandle, metrics: Arc<Metrics>, data_dir: PathBuf) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(Http { node, metrics, data_dir: Arc::new(data_dir) })
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn metrics_text(State(http): State<Http>) -> Response {
    // File system calls, off the runtime's threads and waited for half a second at most: on a
    // disk that hangs, the answer carries the last values (and one measurement stays stuck, the
    // only one: `measure` runs one at a time).
    let (metrics, data_dir) = (http.metrics.clone(), http.data_dir.clone());
    let measured = tokio::task::spawn_blocking(move || metrics.disk.measure(&data_dir));
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), measured).await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], http.metrics.encode()).into_response()
}

async fn health(State(http): State<Http>) -> Response {
    match http.node.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn ready(State(http): State<Http>) -> Response {
    match readiness(http.node.liveness(), &http.node.status()) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

/// Whether a member whose node thread's `liveness` is as given and whose status is `s` is
/// ready, or why not.
pub fn readiness(liveness: Result<(), String>, s: &Status) -> Result<(), String> {
    liveness?;
    if s.leader == 0 {
        return Err("no leader is known (an election is under way, or no quorum is reachable)".into());
    }
    if s.applied.index < s.commit_index {
        return Err(format!("applied index {} is behind commit index {}", s.applied.index, s.commit_index));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_leader_and_everything_committed_applied() {
        let mut s = Status { leader: 2, commit_index: 9, ..Default::default() };
        s.applied.index = 9;
        assert_eq!(readiness(Ok(()), &s), Ok(()));
        let stuck = "the raft thread has not turned for 12s".to_string();
        assert_eq!(readiness(Err(stuck.clone()), &s), Err(stuck), "a stuck node is not ready");
        s.applied.index = 8;
        assert!(readiness(Ok(()), &s).expect_err("lagging").contains("behind commit index 9"));
        s.leader = 0;
        assert!(readiness(Ok(()), &s).expect_err("leaderless").contains("no leader"));
    }
}
