//! tokengate: a TokenReview gate in front of the Kubernetes API server.
//!
//! Workloads present service-account tokens to backends; the backends ask tokengate
//! whether a token is valid for an audience and whose it is. tokengate answers from its
//! cache when it can, rejects hopeless tokens locally, and otherwise asks the API server
//! once per token. Data flows one way:
//!
//! ```text
//! http  ──▶  review  ──▶  token    (parse + local checks: pure, no I/O, `now` passed in)
//!                    ──▶  cache    (moka; keyed hash; TTL ≤ exp; coalesced misses)
//!                    ──▶  upstream (the API server: TokenReview, reviewer credential)
//! ```
//!
//! `config` turns the file and environment into a validated [`config::Config`]; `cli`
//! is the command line; `sim` is a small, faithful API server used by `tokengate dev`,
//! the tests and the benches. The entry points are [`build`] and [`run`].

pub mod cache;

pub mod config;
pub mod http;
pub mod review;
pub mod sim;
pub mod token;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use http::{AppState, router};

/// Builds the gate from a validated configuration: the API-server client (CA and
/// credential read now, so a bad file fails at start) and the decision pipeline.
pub async fn build(config: &config::Config) -> Result<Arc<AppState>, upstream::BuildError> {
    let upstream = upstream::Upstream::from_config(&config.upstream).await?;
    let reviewer = review::Reviewer::new(config, upstream, Arc::new(review::SystemClock));
    Ok(Arc::new(AppState {
        reviewer: Arc::new(reviewer),
        access: config.access.clone(),
    }))
}

/// Serves the gate on `listener` until `shutdown` completes, then drains in-flight
/// requests. Until the API server has answered once, a background probe asks it (the
/// readiness latch); the probe stops at readiness or shutdown.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let probe = tokio::spawn({
        let reviewer = Arc::clone(&state.reviewer);
        let mut stopped = stopped;
        async move {
            tokio::select! {
                () = reviewer.upstream().probe_until_ready(Duration::from_secs(5)) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        }
    });
    let result = http::serve(listener, router(state), async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await;
    probe.abort();
    result
}
