//! The API-server client: TokenReview and SubjectAccessReview with the reviewer credential.
//!
//! Responsible for: one `POST /apis/authentication.k8s.io/v1/tokenreviews` per call, over
//! TLS that trusts only the cluster's CA, authenticated with the reviewer credential (a
//! token file re-read when the kubelet rotates it, the last good value kept when a read
//! fails, and re-read once more on a 401); a bound on reviews in flight (past it: an
//! immediate error, never a queue); retries of retryable failures only, inside the
//! review's time budget; and a readiness latch that closes when the API server first answers.
//!
//! Not responsible for: deciding what an answer means for the caller (see `review`), caching.
//! Retries follow the API server's own webhook client (`webhook.DefaultShouldRetry` and
//! `DefaultRetryBackoffWithInitialDelay`): connection reset, 429, 500 and 504, backoff
//! 500 ms × 1.5 with 20 % jitter, honouring `Retry-After`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config;
use crate::metrics::{Call, Metrics, ReloadResult, UpstreamErrorKind};
use crate::reload::Stamp;

/// The largest TokenReview answer read from the API server.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// First retry delay, growth factor and jitter, as the API server's webhook client.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_FACTOR: f64 = 1.5;
const BACKOFF_JITTER: f64 = 0.2;

/// Why a review could not be answered by the API server. Never carries a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// `upstream.max_in_flight` reviews are already waiting on the API server.
    #[error("{0} TokenReviews are already in flight to the API server (upstream.max_in_flight)")]
    Saturated(usize),
    /// The review's time budget ran out (retries included).
    #[error("the API server did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The connection failed.
    #[error("cannot reach the API server: {0}")]
    Connect(String),
    /// The API server refused the reviewer credential, also after re-reading it.
    #[error(
        "the API server refused tokengate's reviewer credential (401 Unauthorized); check upstream.token_file or the kubeconfig user"
    )]
    Unauthorized,
    /// The reviewer may not create TokenReviews.
    #[error(
        "the API server forbids tokengate's reviewer to create TokenReviews (403: {0}); bind it to the system:auth-delegator ClusterRole"
    )]
    Forbidden(String),
    /// An HTTP status that is neither an answer nor retryable, or retryable but out of budget.
    #[error("the API server answered HTTP {code}: {message}")]
    Status {
        /// The status code.
        code: u16,
        /// The `Status` message, when the body had one.
        message: String,
    },
    /// The answer was not a usable TokenReview.
    #[error("the API server's answer is not a usable TokenReview: {0}")]
    BadResponse(String),
}

impl UpstreamError {
    /// Whether the error means "the API server cannot answer now" (it is down, slow,
    /// overloaded or failing), as opposed to a refusal of our credential or an answer
    /// that makes no sense.
    pub(crate) fn is_unavailability(&self) -> bool {
        match self {
            UpstreamError::Saturated(_) | UpstreamError::Timeout(_) | UpstreamError::Connect(_) => {
                true
            }
            UpstreamError::Status { code, .. } => *code == 429 || *code >= 500,
            UpstreamError::Unauthorized
            | UpstreamError::Forbidden(_)
            | UpstreamError::BadResponse(_) => false,
        }
    }

    /// The error's kind, as a metric label.
    pub(crate) fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Saturated(_) => UpstreamErrorKind::Saturated,
            UpstreamError::Timeout(_) => UpstreamErrorKind::Timeout,
            UpstreamError::Connect(_) => UpstreamErrorKind::Connect,
            UpstreamError::Unauthorized => UpstreamErrorKind::Unauthorized,
            UpstreamError::Forbidden(_) => UpstreamErrorKind::Forbidden,
            UpstreamError::Status { .. } => UpstreamErrorKind::Status,
            UpstreamError::BadResponse(_) => UpstreamErrorKind::BadResponse,
        }
    }
}

/// Why the client could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The CA file could not be read.
    #[error("cannot read upstream CA file {path}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The CA file or kubeconfig held no usable certificate.
    #[error("no usable CA certificate in {0}")]
    NoCertificate(String),
    /// The kubeconfig could not be used.
    #[error("cannot use kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The token file could not be read at start.
    #[error("cannot read reviewer token file {path}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// The API-server client. Cheap to share behind an `Arc`.
pub struct Upstream {
    client: reqwest::Client,
    base: String,
    review_uri: reqwest::Url,
    access_review_uri: reqwest::Url,
    credential: Credential,
    limit: Arc<Semaphore>,
    max_in_flight: usize,
    timeout: Duration,
    ready: tokio::sync::watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// Builds the client: reads the CA and the credential, resolves a kubeconfig.
    pub(crate) async fn from_config(
        cfg: &config::Upstream,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, BuildError> {
        let (base, roots, credential) = match &cfg.source {
            config::UpstreamSource::Direct {
                url,
                ca_file,
                token_file,
            } => {
                let roots = match ca_file {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|source| BuildError::CaFile {
                            path: path.clone(),
                            source,
                        })?;
                        Some(roots_from_pem(&pem, &path.display().to_string())?)
                    }
                    None => None,
                };
                let credential = match token_file {
                    Some(path) => Credential::file(path.clone(), Arc::clone(&metrics))?,
                    None => Credential::none(Arc::clone(&metrics)),
                };
                (url.to_string(), roots, credential)
            }
            config::UpstreamSource::Kubeconfig { path, context } => {
                from_kubeconfig(path, context.clone(), Arc::clone(&metrics)).await?
            }
        };
        let endpoint = |path: &str| {
            reqwest::Url::parse(&format!("{}{path}", base.trim_end_matches('/'))).map_err(|e| {
                BuildError::Kubeconfig {
                    path: PathBuf::new(),
                    message: format!("the API server URL {base} is not usable: {e}"),
                }
            })
        };
        let review_uri = endpoint("/apis/authentication.k8s.io/v1/tokenreviews")?;
        let access_review_uri = endpoint("/apis/authorization.k8s.io/v1/subjectaccessreviews")?;

        let mut root_store = rustls::RootCertStore::empty();
        for cert in roots.unwrap_or_default() {
            // Already validated by roots_from_pem/kubeconfig parsing; a bad one is skipped.
            let _ = root_store.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(root_store)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .http1_only()
            .tcp_nodelay(true)
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            // The API server's answers are read as they come; a redirect is not one.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| BuildError::Kubeconfig {
                path: PathBuf::new(),
                message: format!("cannot build the API server client: {}", describe(&e)),
            })?;
        Ok(Upstream {
            client,
            base: base.trim_end_matches('/').to_string(),
            review_uri,
            access_review_uri,
            credential,
            limit: Arc::new(Semaphore::new(cfg.max_in_flight)),
            max_in_flight: cfg.max_in_flight,
            timeout: cfg.timeout,
            ready: tokio::sync::watch::Sender::new(false),
            metrics,
        })
    }

    /// Whether the API server has answered a TokenReview since start (the readiness latch).
    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Completes once the API server has answered a TokenReview.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// The review's time budget.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks the API server about a token that cannot be valid until it answers, with
    /// growing pauses up to `max_pause`: this closes the readiness latch at start, and
    /// tells the operator (in the log) what is wrong while it cannot.
    pub async fn probe_until_ready(&self, max_pause: Duration) {
        const PROBE: &str = "tokengate-readiness-probe";
        let mut pause = Duration::from_millis(200);
        while !self.is_ready() {
            if let Err(e) = self.review(PROBE, &[PROBE.to_string()]).await {
                tracing::warn!(error = %e, "not ready: the API server has not answered yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(max_pause);
            }
        }
        tracing::info!("ready: the API server answers TokenReviews");
    }

    /// Sends a TokenReview for `token` with `audiences`; returns the API server's status.
    #[tracing::instrument(skip_all, name = "upstream.review")]
    pub(crate) async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, UpstreamError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(audiences.to_vec()),
            },
            ..TokenReview::default()
        };
        let body = serde_json::to_vec(&review).expect("a TokenReview serialises");
        let bytes = self
            .call(Call::TokenReview, &self.review_uri, body.into())
            .await?;
        let status = parse_review(&bytes).inspect_err(|e| {
            self.metrics
                .upstream_call(Call::TokenReview, Duration::ZERO, Some(e.kind()));
        })?;
        self.ready.send_if_modified(|r| !std::mem::replace(r, true));
        Ok(status)
    }

    /// Asks the API server (SubjectAccessReview) whether `user` may create TokenReviews,
    /// as the API server itself requires of a TokenReview's caller. `Ok(Err(reason))` is
    /// a definitive no, with the authorizer's reason (empty when it gave none, as RBAC
    /// gives none when no rule matches).
    #[tracing::instrument(skip_all, name = "upstream.access_review")]
    pub(crate) async fn may_review_tokens(
        &self,
        user: &UserInfo,
    ) -> Result<Result<(), String>, UpstreamError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("authentication.k8s.io".into()),
                    resource: Some("tokenreviews".into()),
                    verb: Some("create".into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let body = serde_json::to_vec(&review).expect("a SubjectAccessReview serialises");
        let bytes = self
            .call(
                Call::SubjectAccessReview,
                &self.access_review_uri,
                body.into(),
            )
            .await?;
        let answer: SubjectAccessReview = serde_json::from_slice(&bytes).map_err(|e| {
            UpstreamError::BadResponse(format!("invalid SubjectAccessReview JSON ({e})"))
        })?;
        let status = answer.status.ok_or_else(|| {
            UpstreamError::BadResponse("the SubjectAccessReview has no status".into())
        })?;
        if status.allowed && status.denied != Some(true) {
            Ok(Ok(()))
        } else {
            Ok(Err(status.reason.unwrap_or_default()))
        }
    }

    /// POSTs `body` to `uri` under the in-flight bound and the time budget, retrying what
    /// is retryable and re-reading the credential once on a 401; returns the answer's body.
    async fn call(
        &self,
        call: Call,
        uri: &reqwest::Url,
        body: Bytes,
    ) -> Result<Bytes, UpstreamError> {
        let post = Ask {
            method: Method::POST,
            accept: JSON,
        };
        self.request(call, &post, uri, body)
            .await
            .map(|reply| reply.body)
    }

    /// GETs `path` of the API server (discovery, keys) like any other call, accepting
    /// `media_type` (the one that path serves: the API server answers 406 to any other);
    /// returns the body and its `Cache-Control: max-age`.
    pub(crate) async fn get(
        &self,
        path: &str,
        media_type: &'static str,
    ) -> Result<(Bytes, Option<Duration>), UpstreamError> {
        let uri = reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| {
            UpstreamError::BadResponse(format!("cannot form a URL for {path}: {e}"))
        })?;
        let get = Ask {
            method: Method::GET,
            accept: media_type,
        };
        let reply = self.request(Call::Keys, &get, &uri, Bytes::new()).await?;
        Ok((reply.body, reply.max_age))
    }

    async fn request(
        &self,
        call: Call,
        how: &Ask,
        uri: &reqwest::Url,
        body: Bytes,
    ) -> Result<Reply, UpstreamError> {
        let started = Instant::now();
        let in_flight = self.metrics.upstream_in_flight();
        in_flight.inc();
        let result = self.call_with_retries(how, uri, body).await;
        in_flight.dec();
        let error = result.as_ref().err().map(UpstreamError::kind);
        self.metrics.upstream_call(call, started.elapsed(), error);
        result
    }

    async fn call_with_retries(
        &self,
        how: &Ask,
        uri: &reqwest::Url,
        body: Bytes,
    ) -> Result<Reply, UpstreamError> {
        let _permit = self
            .limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| UpstreamError::Saturated(self.max_in_flight))?;
        let deadline = Instant::now() + self.timeout;
        let mut backoff = BACKOFF_START;
        let mut reread_credential = false;
        loop {
            let attempt =
                tokio::time::timeout_at(deadline, self.send(how, uri, body.clone())).await;
            let (error, retry_after) = match attempt {
                Err(_) => return Err(UpstreamError::Timeout(self.timeout)),
                Ok(Ok(Answer::Body(reply))) => return Ok(reply),
                Ok(Ok(Answer::Unauthorized)) if !reread_credential => {
                    // The kubelet may have rotated the token since we last read it.
                    reread_credential = true;
                    self.credential.reload();
                    continue;
                }
                Ok(Ok(Answer::Unauthorized)) => return Err(UpstreamError::Unauthorized),
                Ok(Ok(Answer::Retryable(error, retry_after))) => (error, retry_after),
                Ok(Err(error)) => return Err(error),
            };
            let jitter = 1.0 + rand::random::<f64>() * BACKOFF_JITTER;
            let wait = backoff.mul_f64(jitter).max(retry_after.unwrap_or_default());
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, wait_ms = wait.as_millis() as u64, "retrying the API server call");
            tokio::time::sleep(wait).await;
            backoff = backoff.mul_f64(BACKOFF_FACTOR);
        }
    }

    async fn send(
        &self,
        how: &Ask,
        uri: &reqwest::Url,
        body: Bytes,
    ) -> Result<Answer, UpstreamError> {
        let mut request = self
            .client
            .request(how.method.clone(), uri.clone())
            .header(CONTENT_TYPE, JSON)
            .header(ACCEPT, how.accept)
            .header(USER_AGENT, concat!("tokengate/", env!("CARGO_PKG_VERSION")))
            .body(body);
        if let Some(value) = self.credential.header() {
            request = request.header(AUTHORIZATION, value);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if is_connection_reset(&e) => {
                return Ok(Answer::Retryable(
                    UpstreamError::Connect(describe(&e)),
                    None,
                ));
            }
            Err(e) => return Err(UpstreamError::Connect(describe(&e))),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .find_map(|d| d.trim().strip_prefix("max-age="))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .map(Duration::from_secs);
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.contains("json"));
        let body = http::Response::from(response).into_body();
        let bytes = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let message = format!("reading the answer failed: {e}");
                return Ok(Answer::Retryable(UpstreamError::Connect(message), None));
            }
        };
        match status {
            StatusCode::CREATED | StatusCode::OK => {
                if !json {
                    return Err(UpstreamError::BadResponse(
                        "its Content-Type is not application/json".into(),
                    ));
                }
                Ok(Answer::Body(Reply {
                    body: bytes,
                    max_age,
                }))
            }
            StatusCode::UNAUTHORIZED => Ok(Answer::Unauthorized),
            StatusCode::FORBIDDEN => Err(UpstreamError::Forbidden(status_message(&bytes))),
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::GATEWAY_TIMEOUT => Ok(Answer::Retryable(
                UpstreamError::Status {
                    code: status.as_u16(),
                    message: status_message(&bytes),
                },
                retry_after,
            )),
            _ => Err(UpstreamError::Status {
                code: status.as_u16(),
                message: status_message(&bytes),
            }),
        }
    }
}

/// `application/json`: what the API server's resources and OIDC discovery are served as.
pub(crate) const JSON: &str = "application/json";

/// How one call is sent: its method and the media type it accepts.
struct Ask {
    method: Method,
    accept: &'static str,
}

/// A successful answer: its body, and how long it may be kept (`Cache-Control: max-age`).
struct Reply {
    body: Bytes,
    max_age: Option<Duration>,
}

/// One attempt's outcome, before the retry policy.
enum Answer {
    Body(Reply),
    Unauthorized,
    Retryable(UpstreamError, Option<Duration>),
}

fn parse_review(bytes: &[u8]) -> Result<TokenReviewStatus, UpstreamError> {
    let review: TokenReview = serde_json::from_slice(bytes)
        .map_err(|e| UpstreamError::BadResponse(format!("invalid TokenReview JSON ({e})")))?;
    let status = review
        .status
        .ok_or_else(|| UpstreamError::BadResponse("it has no status".into()))?;
    if status.authenticated == Some(true)
        && status
            .user
            .as_ref()
            .and_then(|u| u.username.as_deref())
            .is_none_or(str::is_empty)
    {
        return Err(UpstreamError::BadResponse(
            "it authenticates the token but names no user".into(),
        ));
    }
    Ok(status)
}

/// The `message` of a Kubernetes `Status` body, or a short note when there is none.
fn status_message(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Status {
        message: Option<String>,
    }
    serde_json::from_slice::<Status>(bytes)
        .ok()
        .and_then(|s| s.message)
        .unwrap_or_else(|| "no Status message".into())
}

fn is_connection_reset(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_incomplete_message()
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// The error and its causes on one line (hyper's top-level messages say little alone).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn roots_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, BuildError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(BuildError::NoCertificate(origin.to_string()));
    }
    Ok(certs)
}

type Resolved = (
    String,
    Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    Credential,
);

async fn from_kubeconfig(
    path: &Path,
    context: Option<String>,
    metrics: Arc<Metrics>,
) -> Result<Resolved, BuildError> {
    let fail = |message: String| BuildError::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| fail(describe(&e)))?;
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| fail(describe(&e)))?;
    let auth = &cfg.auth_info;
    if auth.client_certificate.is_some()
        || auth.client_certificate_data.is_some()
        || auth.exec.is_some()
        || auth.auth_provider.is_some()
    {
        return Err(fail("its user authenticates with a client certificate or a plugin; tokengate's reviewer needs a bearer token (`token` or `tokenFile`)".into()));
    }
    let credential = match (&auth.token, &auth.token_file) {
        (_, Some(file)) => Credential::file(PathBuf::from(file), metrics)?,
        (Some(token), None) => {
            use secrecy::ExposeSecret as _;
            Credential::fixed(token.expose_secret(), metrics)
        }
        (None, None) => Credential::none(metrics),
    };
    let roots = cfg
        .root_cert
        .clone()
        .map(|ders| ders.into_iter().map(Into::into).collect());
    Ok((cfg.cluster_url.to_string(), roots, credential))
}

/// The reviewer's bearer token: fixed, or a file re-read when it changes.
struct Credential {
    file: Option<PathBuf>,
    current: RwLock<Option<Loaded>>,
    metrics: Arc<Metrics>,
}

struct Loaded {
    header: HeaderValue,
    stamp: Option<Stamp>,
}

impl Credential {
    fn none(metrics: Arc<Metrics>) -> Credential {
        Credential {
            file: None,
            current: RwLock::new(None),
            metrics,
        }
    }

    fn fixed(token: &str, metrics: Arc<Metrics>) -> Credential {
        Credential {
            file: None,
            current: RwLock::new(bearer(token).map(|header| Loaded {
                header,
                stamp: None,
            })),
            metrics,
        }
    }

    fn file(path: PathBuf, metrics: Arc<Metrics>) -> Result<Credential, BuildError> {
        let loaded = read_token_file(&path).map_err(|source| BuildError::TokenFile {
            path: path.clone(),
            source,
        })?;
        Ok(Credential {
            file: Some(path),
            current: RwLock::new(Some(loaded)),
            metrics,
        })
    }

    /// The Authorization header, re-reading the file first when it changed.
    fn header(&self) -> Option<HeaderValue> {
        if let Some(path) = &self.file {
            let stamp = Stamp::of(path).ok();
            let unchanged = self
                .current
                .read()
                .expect("credential lock")
                .as_ref()
                .is_some_and(|l| stamp.is_some() && l.stamp == stamp);
            if !unchanged {
                self.reload();
            }
        }
        let current = self.current.read().expect("credential lock");
        current.as_ref().map(|l| l.header.clone())
    }

    /// Re-reads the token file; keeps the last good token when the read fails.
    fn reload(&self) {
        let Some(path) = &self.file else { return };
        match read_token_file(path) {
            Ok(loaded) => {
                self.metrics.credential_reload(ReloadResult::Ok);
                tracing::info!(path = %path.display(), "reviewer token file (re)read");
                *self.current.write().expect("credential lock") = Some(loaded);
            }
            Err(e) => {
                self.metrics.credential_reload(ReloadResult::Error);
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot re-read the reviewer token file; keeping the last good token"
                );
            }
        }
    }
}

fn read_token_file(path: &Path) -> io::Result<Loaded> {
    let before = Stamp::of(path)?;
    let text = std::fs::read_to_string(path)?;
    let header = bearer(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the file is empty or holds characters a bearer token cannot have",
        )
    })?;
    Ok(Loaded {
        header,
        stamp: Some(before),
    })
}

fn bearer(token: &str) -> Option<HeaderValue> {
    if token.is_empty() {
        return None;
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_re_read_when_rewritten_and_kept_when_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let credential = Credential::file(path.clone(), Arc::default()).unwrap();
        assert_eq!(credential.header().unwrap(), "Bearer first");

        // The kubelet writes a new file and swaps it in: a new inode.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(credential.header().unwrap(), "Bearer second-token");

        std::fs::remove_file(&path).unwrap();
        assert_eq!(credential.header().unwrap(), "Bearer second-token");
        assert!(credential.header().unwrap().is_sensitive());
    }

    #[test]
    fn an_empty_token_file_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let err = Credential::file(path, Arc::default()).err().unwrap();
        assert!(matches!(err, BuildError::TokenFile { .. }));
    }

    #[test]
    fn answers_without_a_status_or_user_are_refused() {
        let no_status =
            br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{}}"#;
        assert!(
            matches!(parse_review(no_status), Err(UpstreamError::BadResponse(m)) if m.contains("no status"))
        );
        let no_user = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{},"status":{"authenticated":true}}"#;
        assert!(
            matches!(parse_review(no_user), Err(UpstreamError::BadResponse(m)) if m.contains("names no user"))
        );
        assert!(parse_review(b"{\"truncated").is_err());
    }
}
