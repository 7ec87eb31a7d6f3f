//! The running gate: building it from a configuration, serving it, reconfiguring it on
//! a reload, and draining it on shutdown.
//!
//! Responsible for: the state every handler shares ([`AppState`]), the readiness probe
//! at start, the reload of what can change without a restart (policy, access, `/auth`
//! allow-list, verdict lifetimes), and the shutdown sequence: `/readyz` turns 503 first,
//! the listener keeps accepting for `shutdown_delay` (so the Service stops sending
//! traffic before the port closes), then stops accepting, and requests in progress get
//! `shutdown_grace` to finish.
//!
//! Not responsible for: signals and files (the command line's `serve` turns SIGHUP and a
//! changed config file into [`AppState::reconfigure`], SIGTERM into `shutdown`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, KeySource};
use crate::http::{self, AppState};
use crate::keys::{Keys, KeysError};
use crate::metrics::Metrics;
use crate::review::{Clock, Reviewer, SystemClock};
use crate::revocation::{self, Watch};
use crate::{tls, upstream};

/// A gate ready to serve: the handlers' state, the TLS configuration for HTTPS, and how
/// it shuts down.
pub struct Gate {
    /// What the handlers share.
    pub state: Arc<AppState>,
    /// The listener's TLS configuration; plain HTTP when `None`.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// The shutdown sequence's timing.
    pub(crate) shutdown: crate::config::Shutdown,
    /// The listener's limits.
    pub limits: crate::config::Limits,
    /// The revocation watch's client, when it runs.
    pub(crate) revocation_client: Option<kube::Client>,
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
    /// The revocation watch's client could not be set up.
    #[error("cannot set up the revocation watch's API-server client: {0}")]
    Revocation(String),
    /// The `[verify]` key files could not be loaded.
    #[error("cannot load the [verify] keys")]
    Keys(#[from] KeysError),
}

/// Builds the gate from a validated configuration: the API-server client (CA and
/// credential read now, so a bad file fails at start), the decision pipeline, and the
/// listener's TLS configuration.
pub async fn build(config: &Config) -> Result<Gate, BuildError> {
    build_with_clock(config, Arc::new(SystemClock)).await
}

/// [`build`] with a clock of the caller's (tests move time with it).
pub async fn build_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Gate, BuildError> {
    let metrics = Arc::new(Metrics::new());
    let upstream =
        Arc::new(upstream::Upstream::from_config(&config.upstream, Arc::clone(&metrics)).await?);
    let keys = match &config.verify {
        None => None,
        Some(verify) => {
            let keys = Keys::new(verify.source.clone(), Arc::clone(&upstream));
            // Keys on disk must load at start; discovery may come later (readiness waits).
            if verify.source != KeySource::Discovery {
                keys.refresh_now().await?;
            }
            Some(Arc::new(keys))
        }
    };
    let reviewer = Arc::new(Reviewer::new(
        config,
        upstream,
        keys,
        clock,
        Arc::clone(&metrics),
    ));
    let (revocation, revocation_client) = if config.revocation.watch {
        let client = revocation::client(&config.upstream)
            .await
            .map_err(BuildError::Revocation)?;
        let watch = Watch::new(
            Arc::clone(reviewer.cache()),
            metrics,
            config.revocation.secrets,
        );
        (Some(Arc::new(watch)), Some(client))
    } else {
        (None, None)
    };
    let tls = match &config.tls {
        Some(t) => Some(tls::server_config(&t.cert_file, &t.key_file)?),
        None => None,
    };
    Ok(Gate {
        state: Arc::new(AppState::new(config, reviewer, revocation)),
        tls,
        shutdown: config.shutdown,
        limits: config.limits,
        revocation_client,
    })
}

/// Serves the gate on `listener` until `shutdown` completes, then drains: `/readyz`
/// answers 503 at once, the listener closes after `shutdown_delay`, and requests in
/// progress get `shutdown_grace` to finish. Until the API server has answered once, a
/// background probe asks it (the readiness latch).
pub async fn run(
    listener: tokio::net::TcpListener,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Gate {
        state,
        tls,
        shutdown: timing,
        limits,
        revocation_client,
    } = gate;
    let revocation = match (&state.revocation, revocation_client) {
        (Some(watch), Some(client)) => Some(tokio::spawn(Arc::clone(watch).run(client))),
        _ => None,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let probe = tokio::spawn({
        let reviewer = Arc::clone(&state.reviewer);
        let mut stopped = stopped.clone();
        async move {
            tokio::select! {
                () = reviewer.upstream().probe_until_ready(Duration::from_secs(5)) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        }
    });
    let key_refresh = state.reviewer.keys().map(|keys| {
        let keys = Arc::clone(keys);
        tokio::spawn(async move { keys.refresh_periodically().await })
    });
    let stop_accepting = {
        let state = Arc::clone(&state);
        async move {
            shutdown.await;
            state.start_draining();
            let _ = stop.send(true);
            tracing::info!(delay = ?timing.delay, "draining: /readyz answers 503; still serving");
            tokio::time::sleep(timing.delay).await;
            tracing::info!(grace = ?timing.grace, "no longer accepting; finishing requests in progress");
        }
    };
    let server = http::serve(listener, tls, limits, http::router(state), stop_accepting);
    let mut stopped = stopped;
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(timing.delay + timing.grace).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!("shutdown grace period over: requests still in progress are cut off");
            Ok(())
        }
    };
    probe.abort();
    for task in [key_refresh, revocation].into_iter().flatten() {
        task.abort();
    }
    result
}
