//! The one way tests start things: `spawn_gate()` (a sim and a gate in front of it, both
//! on port 0) and a small HTTP client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokengate_sim::{MintRequest, Sim, SimOptions};

pub use crate::eventually::{eventually, eventually_or_log};

/// One kept-alive HTTP/1 connection to a plain-HTTP gate, as Vault keeps one: every
/// request goes over the same socket.
pub struct KeptAlive {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl KeptAlive {
    /// Connects to `gate`.
    pub async fn open(gate: &TestGate) -> KeptAlive {
        let host = gate.url.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        let (send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        KeptAlive { send, host }
    }

    /// Asks for a review of `token` (for the default audiences) as `caller`; returns the
    /// status and the body.
    pub async fn review_as(&mut self, caller: &str, token: &str) -> (StatusCode, String) {
        self.review_with(format!("Bearer {caller}").as_bytes(), token)
            .await
    }

    /// The same with `authorization` as the whole `Authorization` header's value.
    pub async fn review_with(&mut self, authorization: &[u8], token: &str) -> (StatusCode, String) {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
        let authorization = http::HeaderValue::from_bytes(authorization).unwrap();
        let request = Request::post("/review")
            .header(http::header::HOST, &self.host)
            .header(http::header::AUTHORIZATION, authorization)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.send.send_request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// A running sim and a gate in front of it; both stop when this is dropped.
pub struct TestGate {
    pub sim: Sim,
    pub url: String,
    pub state: Arc<tokengate::AppState>,
    /// The CA of the gate's serving certificate, when it serves HTTPS.
    pub gate_ca: Option<String>,
    client: HttpClient,
    pub dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a sim on port 0 that writes its CA, reviewer token and kubeconfig into `dir`.
pub async fn start_sim(dir: &Path) -> Sim {
    Sim::start(SimOptions {
        out_dir: Some(dir.to_path_buf()),
        ..SimOptions::default()
    })
    .await
    .expect("the sim starts")
}

/// Starts a sim and a gate in front of it, with the gate's config overridden by
/// `env` (`TOKENGATE_…` pairs, exactly as an operator would set them).
pub async fn spawn_gate(env: &[(&str, &str)]) -> TestGate {
    spawn_gate_with_clock(env, Arc::new(tokengate::review::SystemClock)).await
}

/// A clock the test moves by hand.
pub struct TestClock(std::sync::Mutex<std::time::SystemTime>);

impl TestClock {
    /// Starts at the real time now.
    pub fn new() -> Arc<TestClock> {
        Arc::new(TestClock(std::sync::Mutex::new(
            std::time::SystemTime::now(),
        )))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl tokengate::review::Clock for TestClock {
    fn now(&self) -> std::time::SystemTime {
        *self.0.lock().unwrap()
    }
}

/// [`spawn_gate`] with the gate reading time from `clock`.
pub async fn spawn_gate_with_clock(
    env: &[(&str, &str)],
    clock: Arc<dyn tokengate::review::Clock>,
) -> TestGate {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let gate = start(sim, dir, env, None, clock).await;
    gate.wait_ready().await;
    gate.authenticate_reviewer().await;
    gate
}

/// Starts a sim and a gate in front of it that serves HTTPS with a certificate for
/// 127.0.0.1 from a CA of its own (`TestGate::gate_ca`).
pub async fn spawn_https_gate(env: &[(&str, &str)]) -> TestGate {
    let dir = tempfile::tempdir().unwrap();
    let ca = serving_certificate(dir.path());
    let cert = dir.path().join("gate.crt").display().to_string();
    let key = dir.path().join("gate.key").display().to_string();
    let mut env = env.to_vec();
    env.extend([
        ("TOKENGATE_TLS_CERT_FILE", cert.as_str()),
        ("TOKENGATE_TLS_KEY_FILE", key.as_str()),
    ]);
    let sim = start_sim(dir.path()).await;
    let mut gate = start(
        sim,
        dir,
        &env,
        Some(ca),
        Arc::new(tokengate::review::SystemClock),
    )
    .await;
    gate.url = gate.url.replace("http://", "https://");
    gate.wait_ready().await;
    gate.authenticate_reviewer().await;
    gate
}

/// Writes `gate.crt`/`gate.key` (for 127.0.0.1 and localhost, from a new CA) into `dir`
/// the way cert-manager does (new files renamed over the old); returns the CA's PEM.
pub fn serving_certificate(dir: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    for (name, pem) in [("gate.crt", cert.pem()), ("gate.key", key.serialize_pem())] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    ca.pem()
}

/// Starts a gate in front of an already running sim whose files are in `dir`.
pub async fn spawn_gate_for(sim: Sim, dir: tempfile::TempDir, env: &[(&str, &str)]) -> TestGate {
    let gate = start(
        sim,
        dir,
        env,
        None,
        Arc::new(tokengate::review::SystemClock),
    )
    .await;
    gate.wait_ready().await;
    gate.authenticate_reviewer().await;
    gate
}

/// The configuration test gates run with: `tokengate dev`'s, in front of `sim` whose
/// files are in `dir`, overridden by `env` (`TOKENGATE_…` pairs).
pub fn test_config(sim: &Sim, dir: &Path, env: &[(&str, &str)]) -> tokengate::config::Config {
    let text = tokengate::cli::dev_config(
        "127.0.0.1:0".parse().unwrap(),
        &sim.url(),
        dir,
        sim.issuer(),
    );
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    tokengate::config::from_str(&text, env).expect("a valid test config")
}

/// A gate built from `config`, reading time from `clock`, serving on a loopback port of
/// its own in this process until the returned sender is dropped: its address, its state.
pub async fn serve_gate(
    config: &tokengate::config::Config,
    clock: Arc<dyn tokengate::review::Clock>,
) -> (
    std::net::SocketAddr,
    Arc<tokengate::AppState>,
    tokio::sync::oneshot::Sender<()>,
) {
    let gate = tokengate::build_with_clock(config, clock)
        .await
        .expect("the gate builds");
    let state = gate.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tokengate::run(listener, gate, async move {
        let _ = stopped.await;
    }));
    (addr, state, stop)
}

/// Waits, up to `limit`, for `state`'s readiness latch (the API server's first answer)
/// and, when signatures are checked, for the keys; whether both came.
pub async fn gate_ready_within(state: &tokengate::AppState, limit: std::time::Duration) -> bool {
    let reviewer = &state.reviewer;
    let ready = async {
        reviewer.upstream().wait_ready().await;
        if let Some(keys) = reviewer.keys() {
            keys.wait_loaded().await;
        }
    };
    tokio::time::timeout(limit, ready).await.is_ok()
}

/// Runs `command` with `input` on its standard input; its standard output's lines as
/// JSON, or a panic naming `what` with its standard error when it fails.
pub async fn json_lines(
    command: &mut tokio::process::Command,
    input: &str,
    what: &str,
) -> Vec<Value> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} could not be started ({e})"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn start(
    sim: Sim,
    dir: tempfile::TempDir,
    env: &[(&str, &str)],
    gate_ca: Option<String>,
    clock: Arc<dyn tokengate::review::Clock>,
) -> TestGate {
    let config = test_config(&sim, dir.path(), env);
    let (addr, state, stop) = serve_gate(&config, clock).await;
    TestGate {
        sim,
        url: format!("http://{addr}"),
        state,
        client: client(gate_ca.as_deref()),
        gate_ca,
        dir,
        _stop: stop,
    }
}

impl TestGate {
    /// Waits for the readiness latch (the probe's first answer from the sim) and, when
    /// signatures are checked, for the keys, bounded.
    pub async fn wait_ready(&self) {
        assert!(
            gate_ready_within(&self.state, std::time::Duration::from_secs(10)).await,
            "the gate becomes ready within 10s"
        );
    }

    /// Has the gate authenticate the reviewer (the caller of every review in these tests)
    /// once, so that upstream-call counts afterwards are those of the tokens reviewed.
    pub async fn authenticate_reviewer(&self) {
        let (status, review) = self.review("not-a-jwt", None).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "the reviewer is let in: {review}"
        );
    }

    /// Creates service account `ns/name`, a pod `name-0` for it, and mints a pod-bound
    /// token for `audiences`, valid one hour.
    pub fn workload_token(&self, ns: &str, name: &str, audiences: &[&str]) -> String {
        self.sim.create_service_account(ns, name);
        self.sim.create_pod(ns, &format!("{name}-0"), name);
        self.mint(ns, name, audiences, Some(&format!("{name}-0")))
    }

    /// Mints a token for an existing service account (and pod).
    pub fn mint(&self, ns: &str, name: &str, audiences: &[&str], pod: Option<&str>) -> String {
        self.sim
            .mint(&MintRequest {
                namespace: ns.into(),
                service_account: name.into(),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                expiration_seconds: Some(3600),
                pod: pod.map(str::to_owned),
            })
            .expect("the sim mints")
    }

    /// A token of service account `ns/name` (UID `uid`, no pod) for `aud`, issued at
    /// `iat`, expiring at `exp`, signed by the sim's key: one the TokenRequest API would
    /// not mint (expired, not yet valid...).
    pub fn signed_token(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        aud: &[&str],
        iat: i64,
        exp: i64,
    ) -> String {
        let claims = crate::jwt::claims(self.sim.issuer(), ns, name, uid, aud, iat, exp);
        self.sim.sign_claims(&claims)
    }

    /// POSTs a v1 TokenReview for `token` (with `audiences`, when given) as the reviewer.
    pub async fn review(&self, token: &str, audiences: Option<&[&str]>) -> (StatusCode, Value) {
        let mut spec = json!({ "token": token });
        if let Some(a) = audiences {
            spec["audiences"] = json!(a);
        }
        let body =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec});
        self.post(
            "/review",
            Some(&self.sim.reviewer_token()),
            body.to_string(),
        )
        .await
    }

    /// POSTs a raw body to `path` with an optional bearer token.
    pub async fn post(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: String,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.url);
        let (status, bytes) = raw(&self.client, Method::POST, &url, bearer, body).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Any request to `path` with an optional bearer token: status, headers, body text.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
    ) -> (StatusCode, http::HeaderMap, String) {
        let url = format!("{}{path}", self.url);
        let (status, headers, body) =
            exchange(&self.client, method, &url, bearer, String::new()).await;
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// The sim's TokenReview counter.
    pub fn upstream_calls(&self) -> u64 {
        self.sim.reviews_served()
    }

    /// The directory with the sim's files (ca.crt, reviewer.token, kubeconfig).
    pub fn files(&self) -> &Path {
        self.dir.path()
    }
}

/// `status.authenticated` of a TokenReview answer (absent when false, as the API server
/// writes it); the answer must have a `status`.
pub fn authenticated(review: &Value) -> bool {
    let status = review["status"].as_object().expect("status is present");
    match status.get("authenticated") {
        None => false,
        Some(v) => v.as_bool().expect("status.authenticated is a bool"),
    }
}

/// `status.error` of a TokenReview answer ("" when absent).
pub fn error(review: &Value) -> String {
    review["status"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits (bounded) until the gate of another process at `url` answers `/readyz` with
/// 200: it may not even listen yet. There is no event to await across processes.
pub async fn await_ready(url: &str) {
    let readyz = format!("{url}/readyz");
    eventually(
        std::time::Duration::from_secs(15),
        &format!("{url} becomes ready"),
        async || try_get(&readyz).await == Some(StatusCode::OK),
    )
    .await;
}

/// GET over plain HTTP, answer as text.
pub async fn get(url: &str) -> (StatusCode, String) {
    let (status, body) = raw(&client(None), Method::GET, url, None, String::new()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP(S) client trusting only `ca_pem` (no CA: plain HTTP only).
fn client(ca_pem: Option<&str>) -> HttpClient {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn raw(
    client: &HttpClient,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: String,
) -> (StatusCode, Bytes) {
    let (status, _, bytes) = exchange(client, method, url, bearer, body).await;
    (status, bytes)
}

async fn exchange(
    client: &HttpClient,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: String,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("the gate answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes)
}

/// The built `tokengate` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tokengate"))
}

/// `tokengate serve` as a process of its own, in front of `sim` (whose files are in
/// `dir`), with its config in `dir/gate.toml`, JSON logs at debug on a piped stderr,
/// and `env` added to its environment. Ready when this returns.
pub async fn serve_process(
    sim: &Sim,
    dir: &Path,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String, PathBuf) {
    // A free port: bound, read, released; the gate binds it a moment later.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.join("gate.toml");
    let text = tokengate::cli::dev_config(listen, &sim.url(), dir, sim.issuer());
    std::fs::write(&config, text).unwrap();
    let child = tokio::process::Command::new(binary())
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{listen}");
    await_ready(&url).await;
    (child, url, config)
}

/// Sends a signal to a child process.
pub async fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let status = tokio::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// A client for plain-HTTP gates of other processes.
pub fn plain_client() -> HttpClient {
    client(None)
}

/// A client for HTTPS servers whose certificate `ca_pem` signed (and plain HTTP).
pub fn client_trusting(ca_pem: &str) -> HttpClient {
    client(Some(ca_pem))
}

/// POSTs `body` to `url` as `bearer`; the answer as JSON (Null when it is not JSON).
pub async fn post_with(
    client: &HttpClient,
    url: &str,
    bearer: &str,
    body: String,
) -> (StatusCode, Value) {
    let (status, bytes) = raw(client, Method::POST, url, Some(bearer), body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A loopback port nothing listens on right now, for a peer process (OpenBao, nginx) to
/// bind a moment later; such peers take no port 0 that they would report back.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain-HTTP GET of `url` as a client of a proxy sends it: an optional bearer token
/// and extra headers; the status, headers and body text.
pub async fn get_through(
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut request = Request::get(url);
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client(None)
        .request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("the proxy answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A proxy's configuration for the ingress tests: `template` written into `file` in a new
/// directory, with `{dir}` (that directory), `{port}` (a free port for the proxy),
/// `{backend}` (an [`echo_backend`], started here) and `{gate}` (the hook's `host:port`)
/// filled in. Returns the directory, the port and the file.
pub async fn proxy_config(
    template: &str,
    file: &str,
    gate: &str,
) -> (tempfile::TempDir, u16, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (port, backend) = (free_port(), echo_backend().await);
    let text = template
        .replace("{dir}", &dir.path().display().to_string())
        .replace("{port}", &port.to_string())
        .replace("{backend}", &backend)
        .replace("{gate}", gate);
    let path = dir.path().join(file);
    std::fs::write(&path, text).unwrap();
    (dir, port, path)
}

/// A backend for the ingress proxies' tests, on a loopback port of its own (returned as
/// `host:port`): it answers `GET /fails` with `500 backend failed`, and anything else with
/// `backend uri=<the request's URI>` and then every `X-Remote-*` header it received, one
/// `name: value` line each, in order: exactly what a proxy let through.
pub async fn echo_backend() -> String {
    use axum::response::IntoResponse as _;
    let app = axum::Router::new()
        .route(
            "/fails",
            axum::routing::get(|| async {
                (StatusCode::INTERNAL_SERVER_ERROR, "backend failed\n")
            }),
        )
        .fallback(|request: axum::extract::Request| async move {
            let mut text = format!("backend uri={}\n", request.uri());
            for (name, value) in request.headers() {
                if name.as_str().starts_with("x-remote-") {
                    text += &format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes()));
                }
            }
            text.into_response()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

/// GET over plain HTTP: the status, or `None` while nothing answers (a peer that is
/// still starting).
pub async fn try_get(url: &str) -> Option<StatusCode> {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = client(None).request(request).await.ok()?;
    Some(response.status())
}
