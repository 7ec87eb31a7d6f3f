//! The simulated API server: a small, faithful subset of kube-apiserver for `tokengate
//! dev`, `tokengate sim`, the tests and the benches.
//!
//! It serves TokenReview (v1 and v1beta1) with the API server's authenticator rules and
//! wording, TokenRequest with the real claim layout, OIDC discovery and JWKS, pods and
//! service accounts that can be created and deleted, and lists and watches of pods,
//! service accounts and Secrets as `kube::runtime::watcher` and informers consume them
//! (resourceVersions, bookmarks, `410 Gone`, metadata-only); it signs ES256 tokens with a key
//! whose `kid` is derived as the API server derives it, over HTTPS with a CA it generates.
//! Test knobs add latency, inject failures, count reviews, and expire, cut or forbid
//! watches, in-process through [`Sim`] and over HTTP under `/sim/`.
//!
//! The files, one concept each:
//! - `cluster`: the shared state and the operations on it (TokenRequest, legacy tokens);
//! - `review`: the API server's service-account authenticator; `jwt`: its token reader;
//! - `tokens`: claim layouts and TokenRequest validation;
//! - `keys`: CA, serving certificate, signing keys, JWKS;
//! - `store`: objects and the RBAC table; `events`: the change log that watches follow;
//! - `watch`: lists and watches over HTTP; `query`: their parameters and `Accept`;
//! - `api`: the routes, caller authentication, TokenReview and TokenRequest handlers;
//! - `objects`: pods and service accounts over HTTP; `discovery`: OIDC and API discovery;
//! - `status`: `Status` error bodies;
//! - `knobs`: failure injection, latency, counters; `server`: the accept loop.

mod api;
mod cluster;
mod discovery;
mod events;
mod jwt;
mod keys;
mod knobs;
mod objects;
mod query;
mod review;
mod server;
mod status;
mod store;
mod tokens;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use cluster::Cluster;
pub use knobs::Failure;

/// The issuer a sim uses unless told otherwise: the API server's in-cluster default.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Namespace of the reviewer service account every sim starts with.
pub const REVIEWER_NAMESPACE: &str = "tokengate";
/// Name of the reviewer service account every sim starts with.
pub const REVIEWER_NAME: &str = "tokengate-reviewer";
/// `deletionGracePeriodSeconds` of a graceful pod deletion (the pod default).
const POD_GRACE_SECONDS: i64 = 30;
/// Lifetime of the reviewer token a sim mints at start: one year.
const REVIEWER_TOKEN_SECONDS: i64 = 365 * 24 * 3600;

/// Everything that can go wrong starting or driving a sim.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Generating the CA or serving certificate failed.
    #[error("cannot generate the serving certificate")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration was refused.
    #[error("cannot configure TLS")]
    Tls(#[from] rustls::Error),
    /// A signing key could not be generated or loaded.
    #[error("signing key: {0}")]
    Key(String),
    /// A file for `out_dir` could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TokenRequest was refused, as the API server would refuse it.
    #[error("token request refused ({code}): {message}")]
    TokenRequest {
        /// The HTTP status the API would answer with.
        code: u16,
        /// The API server's message.
        message: String,
    },
}

/// How to start a sim.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `iss` of projected tokens (`--service-account-issuer`).
    pub issuer: String,
    /// `--api-audiences`: the audiences of a review that names none. Empty (the
    /// default) means `[issuer]`, as the API server defaults it, so that setting only
    /// `issuer` moves both; [`Sim::api_audiences`] gives the effective list.
    pub api_audiences: Vec<String>,
    /// HTTPS with a CA the sim generates (default); `false` serves plain HTTP.
    pub tls: bool,
    /// If set, `ca.crt`, `reviewer.token` and `kubeconfig` are written there at start.
    pub out_dir: Option<PathBuf>,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            issuer: DEFAULT_ISSUER.to_owned(),
            api_audiences: Vec::new(),
            tls: true,
            out_dir: None,
        }
    }
}

/// A TokenRequest, in-process: what `POST …/serviceaccounts/{name}/token` takes.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// `spec.audiences`; empty means the API audiences.
    pub audiences: Vec<String>,
    /// `spec.expirationSeconds`; `None` means 3600. Must be 600..=2^32.
    pub expiration_seconds: Option<i64>,
    /// The pod to bind the token to (it must exist and run as the service account).
    pub pod: Option<String>,
}

/// A running sim. Dropping it stops the server (and ends its connections); so does
/// [`Sim::shutdown`], which also waits for that.
pub struct Sim {
    cluster: Arc<Cluster>,
    addr: SocketAddr,
    ca_pem: String,
    reviewer_token: String,
    task: Option<JoinHandle<()>>,
}

impl Sim {
    /// Binds, spawns the server and returns once it is listening. Creates the reviewer
    /// service account `tokengate/tokengate-reviewer`, allows it to create tokenreviews
    /// and mints its token (valid one year); writes `out_dir` if asked.
    pub async fn start(opts: SimOptions) -> Result<Sim, SimError> {
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: opts.listen,
            source,
        })?;
        let (scheme, tls) = if opts.tls {
            ("https", Some(keys::Tls::generate()?))
        } else {
            ("http", None)
        };
        let url = format!("{scheme}://{}", url_host(addr));
        let api_audiences = if opts.api_audiences.is_empty() {
            vec![opts.issuer.clone()]
        } else {
            opts.api_audiences
        };
        let cluster = Arc::new(Cluster::new(opts.issuer, api_audiences, url)?);
        let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone()).unwrap_or_default();

        let now = SystemTime::now();
        cluster.ensure_service_account(REVIEWER_NAMESPACE, REVIEWER_NAME, now);
        {
            let mut store = cluster.store();
            store.allow_reviewer(&reviewer_username());
            // The revocation ClusterRole: list and watch pods, serviceaccounts, secrets.
            store.set_watcher(&reviewer_username(), true);
        }
        let spec = TokenRequestSpec {
            expiration_seconds: Some(REVIEWER_TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        };
        let reviewer_token =
            minted_token(cluster.token_request(REVIEWER_NAMESPACE, REVIEWER_NAME, &spec, now))?;

        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config));
        let app = api::router(Arc::clone(&cluster));
        let task = tokio::spawn(server::accept_loop(listener, acceptor, app));
        let sim = Sim {
            cluster,
            addr,
            ca_pem,
            reviewer_token,
            task: Some(task),
        };
        if let Some(dir) = &opts.out_dir {
            sim.write_out_dir(dir).await?;
        }
        Ok(sim)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `https://127.0.0.1:PORT` (or `http://…` without TLS).
    pub fn url(&self) -> String {
        self.cluster.url.clone()
    }

    /// PEM of the CA that signed the serving certificate (SANs `127.0.0.1`, `localhost`,
    /// `::1`); empty without TLS.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// `iss` of the projected tokens it mints.
    pub fn issuer(&self) -> &str {
        &self.cluster.issuer
    }

    /// Its API audiences (`[issuer]` unless set).
    pub fn api_audiences(&self) -> &[String] {
        &self.cluster.api_audiences
    }

    /// The token of `tokengate/tokengate-reviewer`, allowed to create tokenreviews.
    pub fn reviewer_token(&self) -> String {
        self.reviewer_token.clone()
    }

    /// The router, for `oneshot` tests that need no socket.
    pub fn router(&self) -> axum::Router {
        api::router(Arc::clone(&self.cluster))
    }

    /// Creates service account `ns/name` and returns its uid. If it exists, returns the
    /// existing uid; after a delete, a new account gets a new uid.
    pub fn create_service_account(&self, ns: &str, name: &str) -> String {
        self.cluster
            .ensure_service_account(ns, name, SystemTime::now())
    }

    /// Deletes service account `ns/name` (and its legacy token Secrets, as the token
    /// controller does; watchers see a `DELETED` for each); `false` if it did not exist.
    pub fn delete_service_account(&self, ns: &str, name: &str) -> bool {
        self.cluster
            .store()
            .delete_service_account(ns, name)
            .is_ok()
    }

    /// Creates pod `ns/name` running as `service_account` and returns its uid (the
    /// existing uid if it exists). The service account is not required to exist.
    pub fn create_pod(&self, ns: &str, name: &str, service_account: &str) -> String {
        self.cluster
            .ensure_pod(ns, name, service_account, SystemTime::now())
    }

    /// Deletes pod `ns/name` at once (no grace period: watchers see one `DELETED`, with
    /// the pod's last state at a new resourceVersion); `false` if it did not exist.
    pub fn delete_pod(&self, ns: &str, name: &str) -> bool {
        self.cluster.store().delete::<Pod>(ns, name).is_ok()
    }

    /// Whether service account `ns/name` exists.
    pub fn service_account_exists(&self, ns: &str, name: &str) -> bool {
        self.cluster.store().get::<ServiceAccount>(ns, name).is_ok()
    }

    /// Lets `username` create tokenreviews (as a `system:auth-delegator` binding would).
    pub fn allow_reviewer(&self, username: &str) {
        self.cluster.store().allow_reviewer(username);
    }

    /// The uid of pod `ns/name`, if it exists.
    pub fn pod_uid(&self, ns: &str, name: &str) -> Option<String> {
        self.cluster.store().uid_of::<Pod>(ns, name)
    }

    /// The uid of service account `ns/name`, if it exists.
    pub fn service_account_uid(&self, ns: &str, name: &str) -> Option<String> {
        self.cluster.store().uid_of::<ServiceAccount>(ns, name)
    }

    /// Begins a graceful deletion of pod `ns/name`, as `kubectl delete pod` does: sets
    /// `metadata.deletionTimestamp` (watchers see `MODIFIED`) and leaves the pod, and
    /// the tokens bound to it, in place until [`Sim::delete_pod`]. `false` if the pod
    /// does not exist or is already being deleted. ([`Sim::delete_pod`] alone deletes at
    /// once: watchers see a single `DELETED`.)
    pub fn begin_pod_deletion(&self, ns: &str, name: &str) -> bool {
        self.cluster
            .store()
            .begin_deletion::<Pod>(ns, name, POD_GRACE_SECONDS, SystemTime::now())
            .unwrap_or(false)
    }

    /// The cluster's current resourceVersion (that of the last write).
    pub fn resource_version(&self) -> u64 {
        self.cluster.store().resource_version()
    }

    /// Lets `username` list and watch pods, serviceaccounts and secrets cluster-wide (the
    /// reviewer may from the start).
    pub fn allow_watcher(&self, username: &str) {
        self.cluster.store().set_watcher(username, true);
    }

    /// Takes list and watch away from the reviewer (`true`; its lists and watches get
    /// the API server's 403) or gives them back (`false`). Open watches stay open, as
    /// RBAC is checked when a request starts.
    pub fn deny_watch(&self, deny: bool) {
        self.cluster
            .store()
            .set_watcher(&reviewer_username(), !deny);
    }

    /// Ends every open watch with the `ERROR` event of `410 Gone` (`Expired`) and
    /// forgets the change log up to the current resourceVersion, so that clients must
    /// re-list (a watch from an older version gets the same `ERROR`).
    pub fn expire_watches(&self) {
        self.cluster.store().expire_watches();
    }

    /// Drops every open watch's connection abruptly (TCP reset, no end of the chunked
    /// body); clients resume from their last resourceVersion, from the change log.
    pub fn cut_watches(&self) {
        self.cluster.store().events().cut();
    }

    /// Open watch responses (each one an HTTP request following the change log).
    pub fn watches_open(&self) -> usize {
        self.cluster.store().events().subscribers()
    }

    /// How often watches that allow bookmarks get a `BOOKMARK` (default 1 s; zero: never).
    /// Applies to watches opened afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.cluster.knobs.set_bookmark_interval(interval);
    }

    /// Mints a token as the TokenRequest endpoint does.
    pub fn mint(&self, req: &MintRequest) -> Result<String, SimError> {
        let spec = TokenRequestSpec {
            audiences: req.audiences.clone(),
            expiration_seconds: req.expiration_seconds,
            bound_object_ref: req.pod.as_ref().map(|pod| BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod.clone()),
                uid: None,
            }),
        };
        minted_token(self.cluster.token_request(
            &req.namespace,
            &req.service_account,
            &spec,
            SystemTime::now(),
        ))
    }

    /// Signs arbitrary claims with the current key under the API server's header
    /// (`alg` ES256, `kid`): for expired, future, or otherwise odd tokens.
    pub fn sign_claims(&self, claims: &serde_json::Value) -> String {
        self.cluster.keys.sign(claims)
    }

    /// Signs arbitrary claims under an arbitrary header; the signature is still ES256
    /// with the current key, whatever the header says.
    pub fn sign_raw(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        self.cluster.keys.sign_raw(header, claims)
    }

    /// The `kid` of the key that signs now.
    pub fn current_kid(&self) -> String {
        self.cluster.keys.current_kid()
    }

    /// Makes a new signing key current and returns its `kid`. Old keys stay published in
    /// the JWKS and keep verifying, as with the API server's multiple key files.
    pub fn rotate_keys(&self) -> Result<String, SimError> {
        self.cluster.keys.rotate()
    }

    /// Creates a `kubernetes.io/service-account-token` Secret for `service_account`
    /// (creating the account if it does not exist) and returns its legacy JWT.
    pub fn legacy_token(&self, ns: &str, service_account: &str) -> String {
        self.cluster
            .legacy_token(ns, service_account, &self.ca_pem, SystemTime::now())
    }

    /// TokenReview requests that reached the handler, whatever their outcome (injected
    /// failures, 401 and 403 included).
    pub fn reviews_served(&self) -> u64 {
        self.cluster.knobs.reviews()
    }

    /// JWKS documents served so far (key refreshes by the gate).
    pub fn jwks_served(&self) -> u64 {
        self.cluster.knobs.jwks()
    }

    /// Makes OIDC discovery and the JWKS answer 503 (`false`) or serve again (`true`).
    pub fn set_discovery_available(&self, available: bool) {
        self.cluster.knobs.set_discovery_down(!available);
    }

    /// SubjectAccessReviews answered so far.
    pub fn access_reviews_served(&self) -> u64 {
        self.cluster.knobs.access_reviews()
    }

    /// Makes the next `n` TokenReview requests fail this way, replacing any failures
    /// still pending (`n = 0` clears them).
    pub fn fail_next(&self, n: u32, failure: Failure) {
        self.cluster.knobs.fail_next(n, failure);
    }

    /// Adds `d` of latency to every TokenReview (zero turns it off).
    pub fn set_latency(&self, d: Duration) {
        self.cluster.knobs.set_latency(d);
    }

    /// Stops the server, ends its connections and waits until they are gone.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The task can only end by the abort; its result says nothing more.
            let _ = task.await;
        }
    }

    async fn write_out_dir(&self, dir: &Path) -> Result<(), SimError> {
        let write = |name: &str, contents: String, private: bool| {
            let path = dir.join(name);
            async move {
                tokio::fs::write(&path, contents)
                    .await
                    .map_err(|source| SimError::Write {
                        path: path.clone(),
                        source,
                    })?;
                #[cfg(unix)]
                if private {
                    use std::os::unix::fs::PermissionsExt as _;
                    let mode = std::fs::Permissions::from_mode(0o600);
                    tokio::fs::set_permissions(&path, mode)
                        .await
                        .map_err(|source| SimError::Write { path, source })?;
                }
                #[cfg(not(unix))]
                let _ = private;
                Ok::<(), SimError>(())
            }
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| SimError::Write {
                path: dir.to_owned(),
                source,
            })?;
        if !self.ca_pem.is_empty() {
            write("ca.crt", self.ca_pem.clone(), false).await?;
        }
        write("reviewer.token", self.reviewer_token.clone(), true).await?;
        write("kubeconfig", self.kubeconfig(), true).await?;
        Ok(())
    }

    /// A kubeconfig for this sim, authenticating as the reviewer.
    pub fn kubeconfig(&self) -> String {
        let ca = if self.ca_pem.is_empty() {
            String::new()
        } else {
            format!(
                "\n    certificate-authority-data: {}",
                STANDARD.encode(&self.ca_pem)
            )
        };
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: tokengate-sim\n  cluster:\n    server: {url}{ca}\n\
             contexts:\n\
             - name: tokengate-sim\n  context:\n    cluster: tokengate-sim\n    user: {REVIEWER_NAME}\n\
             current-context: tokengate-sim\n\
             users:\n\
             - name: {REVIEWER_NAME}\n  user:\n    token: {token}\n",
            url = self.cluster.url,
            token = self.reviewer_token,
        )
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts a sim, runs it until `shutdown` completes, then stops it. Prints nothing.
pub async fn run(opts: SimOptions, shutdown: impl Future<Output = ()>) -> Result<(), SimError> {
    let sim = Sim::start(opts).await?;
    shutdown.await;
    sim.shutdown().await;
    Ok(())
}

fn minted_token(
    minted: Result<k8s_openapi::api::authentication::v1::TokenRequest, status::ApiError>,
) -> Result<String, SimError> {
    match minted {
        Ok(request) => Ok(request.status.map(|s| s.token).unwrap_or_default()),
        Err(err) => Err(SimError::TokenRequest {
            code: err.code.as_u16(),
            message: err.message,
        }),
    }
}

/// The username of the reviewer service account.
pub(crate) fn reviewer_username() -> String {
    tokens::username(REVIEWER_NAMESPACE, REVIEWER_NAME)
}

/// The host part of a URL for `addr` (IPv6 in brackets).
fn url_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;
