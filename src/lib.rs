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
//! `ingress` answers the `/auth` hook of nginx, Traefik and Envoy. `config` turns the file and environment into a validated [`config::Config`]; `cli`
//! is the command line; `sim` is a small, faithful API server used by `tokengate dev`,
//! the tests and the benches. The entry points are [`build`] and [`run`].

pub mod access;
pub mod cache;
pub mod cli;

pub mod config;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod reload;
pub mod review;
pub mod sim;
pub mod tls;
pub mod token;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use http::{AppState, router};

/// A gate ready to serve: the handlers' state and, for HTTPS, the TLS configuration.
pub struct Gate {
    /// What the handlers share.
    pub state: Arc<AppState>,
    /// The listener's TLS configuration; plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Why the gate could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The API-server client could not be set up.
    #[error("cannot set up the API-server client")]
    Upstream(#[from] upstream::BuildError),
    /// The listener's certificate or key could not be loaded.
    #[error("cannot load the [tls] certificate and key")]
    Tls(#[from] tls::TlsError),
}

/// Builds the gate from a validated configuration: the API-server client (CA and
/// credential read now, so a bad file fails at start), the decision pipeline, and the
/// listener's TLS configuration.
pub async fn build(config: &config::Config) -> Result<Gate, BuildError> {
    build_with_clock(config, Arc::new(review::SystemClock)).await
}

/// [`build`] with a clock of the caller's (tests move time with it).
pub async fn build_with_clock(
    config: &config::Config,
    clock: Arc<dyn review::Clock>,
) -> Result<Gate, BuildError> {
    let metrics = Arc::new(metrics::Metrics::new());
    let upstream = upstream::Upstream::from_config(&config.upstream, Arc::clone(&metrics)).await?;
    let reviewer = review::Reviewer::new(config, upstream, clock, Arc::clone(&metrics));
    let tls = match &config.tls {
        Some(t) => Some(tls::server_config(&t.cert_file, &t.key_file)?),
        None => None,
    };
    let access = access::CallerAccess::new(config.access.clone(), Arc::clone(reviewer.upstream()));
    let state = Arc::new(AppState {
        reviewer: Arc::new(reviewer),
        access,
        auth: config.auth.clone(),
    });
    Ok(Gate { state, tls })
}

/// Serves the gate on `listener` until `shutdown` completes, then drains in-flight
/// requests. Until the API server has answered once, a background probe asks it (the
/// readiness latch); the probe stops at readiness or shutdown.
pub async fn run(
    listener: tokio::net::TcpListener,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Gate { state, tls } = gate;
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
    let result = http::serve(listener, tls, router(state), async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await;
    probe.abort();
    result
}
