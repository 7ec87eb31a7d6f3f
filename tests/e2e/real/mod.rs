//! The tier the real API server judges: kube-apiserver and etcd, built from their Go
//! modules, on loopback (`control_plane`), and tokengate in front of it with `deploy/`'s
//! own RBAC, its reviewer credential a token from the API server's TokenRequest.

mod clients;
pub mod control_plane;
mod deploy;
mod differential;
mod readiness;
mod requests;
mod revocation;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

pub use control_plane::{ControlPlane, ISSUER, control_plane, own_control_plane};

use crate::support::{
    HttpClient, client_trusting, eventually, gate_ready_within, post_with, serve_gate,
};

/// The reviewer: `deploy/`'s service account, bound by `deploy/`'s own RBAC files.
pub const REVIEWER: &str = "system:serviceaccount:tokengate:tokengate";

/// Applies `deploy/`'s namespace, service account and RBAC to the control plane, once.
async fn deploy_rbac(plane: &ControlPlane) {
    plane
        .rbac
        .get_or_init(|| async {
            let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
            let mut args = vec!["apply"];
            let files = [
                "namespace.yaml",
                "serviceaccount.yaml",
                "clusterrolebinding.yaml",
                "clusterrole-revocation.yaml",
            ]
            .map(|f| format!("{deploy}/{f}"));
            for f in &files {
                args.extend(["-f", f]);
            }
            plane.kubectl(&args).await;
        })
        .await;
}

/// A gate (in this process) in front of the real API server; stops when dropped.
pub struct RealGate {
    pub plane: &'static ControlPlane,
    pub url: String,
    pub state: Arc<tokengate::AppState>,
    /// The reviewer's token: the gate's upstream credential, and the caller of reviews.
    pub reviewer_token: String,
    /// The CA of the gate's serving certificate, when it serves HTTPS.
    pub gate_ca: Option<String>,
    client: HttpClient,
    _dir: tempfile::TempDir,
    _certs: Option<tempfile::TempDir>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a gate in front of the real API server with the README's settings (signature
/// keys from discovery), overridden by `env` (`TOKENGATE_…` pairs). Not waited on.
pub async fn start_gate(env: &[(&str, &str)]) -> RealGate {
    start_gate_with_clock(env, Arc::new(tokengate::review::SystemClock)).await
}

/// [`start_gate`] with the gate reading time from `clock`.
pub async fn start_gate_with_clock(
    env: &[(&str, &str)],
    clock: Arc<dyn tokengate::review::Clock>,
) -> RealGate {
    start_gate_on(control_plane().await, env, clock).await
}

/// [`start_gate_with_clock`] in front of `plane`.
pub async fn start_gate_on(
    plane: &'static ControlPlane,
    env: &[(&str, &str)],
    clock: Arc<dyn tokengate::review::Clock>,
) -> RealGate {
    deploy_rbac(plane).await;
    let dir = tempfile::tempdir().unwrap();
    let reviewer_token = plane
        .token("tokengate", "tokengate", &[ISSUER], None, 3600)
        .await;
    let token_file = dir.path().join("reviewer.token");
    std::fs::write(&token_file, &reviewer_token).unwrap();
    let text = plane.gate_config(&token_file, REVIEWER);
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let config = tokengate::config::from_str(&text, env).expect("a valid config");
    let (addr, state, stop) = serve_gate(&config, clock).await;
    RealGate {
        plane,
        url: format!("http://{addr}"),
        state,
        reviewer_token,
        gate_ca: None,
        client: client_trusting(&plane.ca_pem),
        _dir: dir,
        _certs: None,
        _stop: stop,
    }
}

/// [`start_gate`], then waits (bounded) until it is ready: the API server has answered
/// and the signature keys are loaded.
pub async fn real_gate(env: &[(&str, &str)]) -> RealGate {
    ready(start_gate(env).await).await
}

/// [`real_gate`] serving HTTPS, with a certificate for 127.0.0.1 from a CA of its own
/// ([`RealGate::gate_ca`]): clients built on client-go send no bearer token over HTTP.
pub async fn real_https_gate(env: &[(&str, &str)]) -> RealGate {
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::support::serving_certificate(certs.path());
    let cert = certs.path().join("gate.crt").display().to_string();
    let key = certs.path().join("gate.key").display().to_string();
    let mut env = env.to_vec();
    env.extend([
        ("TOKENGATE_TLS_CERT_FILE", cert.as_str()),
        ("TOKENGATE_TLS_KEY_FILE", key.as_str()),
    ]);
    let mut gate = start_gate(&env).await;
    gate.url = gate.url.replace("http://", "https://");
    gate.client = client_trusting(&format!("{}{ca}", gate.plane.ca_pem));
    gate.gate_ca = Some(ca);
    gate._certs = Some(certs);
    ready(gate).await
}

/// Waits (bounded) until `gate` is ready, and, when it watches for revocations, until
/// its watch is healthy.
pub async fn ready(gate: RealGate) -> RealGate {
    let (status, body) = gate.readyz_within(std::time::Duration::from_secs(15)).await;
    assert_eq!(status, StatusCode::OK, "the gate becomes ready: {body}");
    if gate.state.revocation.is_some() {
        let cache = gate.state.reviewer.cache();
        eventually(
            Duration::from_secs(15),
            "the revocation watch is healthy",
            async || cache.is_watch_healthy(),
        )
        .await;
    }
    gate
}

impl RealGate {
    /// Waits up to `limit` for `/readyz` to say 200; the last answer.
    pub async fn readyz_within(&self, limit: std::time::Duration) -> (StatusCode, String) {
        // What /readyz answers then is the verdict, ready or not.
        gate_ready_within(&self.state, limit).await;
        self.get("/readyz").await
    }

    /// GETs `path` of the gate: the status and the body.
    async fn get(&self, path: &str) -> (StatusCode, String) {
        let request = http::Request::get(format!("{}{path}", self.url))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of one series of the gate's `/metrics` (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> u64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// TokenReviews the gate has had answered by the API server.
    pub async fn upstream_reviews(&self) -> u64 {
        self.metric(r#"tokengate_decisions_total{source="upstream"}"#)
            .await
    }

    /// tokengate's answer to a TokenReview of `token` for `audiences`, asked by the reviewer.
    pub async fn review(&self, token: &str, audiences: &[&str]) -> (StatusCode, Value) {
        self.review_spec(json!({"token": token, "audiences": audiences}))
            .await
    }

    /// The same, naming no audience (the gate's `policy.audiences` are asked for).
    pub async fn review_naming_no_audience(&self, token: &str) -> (StatusCode, Value) {
        self.review_spec(json!({ "token": token })).await
    }

    async fn review_spec(&self, spec: Value) -> (StatusCode, Value) {
        let body =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec});
        post_with(
            &self.client,
            &format!("{}/apis/authentication.k8s.io/v1/tokenreviews", self.url),
            &self.reviewer_token,
            body.to_string(),
        )
        .await
    }
}

/// A TCP proxy to `target` on a loopback port of its own, for cutting the gate off from
/// the API server as a network blip would: [`Proxy::pause`] closes every connection
/// through it and refuses new ones until [`Proxy::resume`]. TLS passes through it
/// untouched (the serving certificate is for 127.0.0.1, as the proxy is).
pub struct Proxy {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    paused: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// Starts forwarding to `target` (`host:port`).
    pub async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (paused, _) = tokio::sync::watch::channel(false);
        let watch = paused.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut paused = watch.subscribe();
                if *paused.borrow() {
                    continue; // dropped: refused
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = paused.wait_for(|p| *p) => {}
                    }
                });
            }
        });
        Proxy { url, paused }
    }

    /// Closes every connection and refuses new ones.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Lets connections through again.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}
