//! The HTTP surface: the axum router, its middleware stack, and the one place where
//! errors become responses.
//!
//! Responsible for: routing (`/auth` is answered in `ingress`), the TokenReview endpoints (`POST /review`,
//! `POST /apis/authentication.k8s.io/{v1,v1beta1}/tokenreviews`) answered exactly as the
//! API server answers (201, `spec` echoed, `status` always present, the request's own
//! API version back), caller authentication and authorization on them, `/healthz` and
//! `/readyz`, and the limits that protect the process (body size, concurrency, time).
//!
//! Not responsible for: deciding anything about a token (see `review`).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use crate::cache::Verdict;
use crate::config::Limits;
pub use crate::gate::AppState;
use crate::metrics::{CacheKind, Endpoint, Outcome};
use crate::review::Decision;
use crate::upstream::UpstreamError;
use crate::user::User;

/// The largest request body read (a TokenReview is about 1–2 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests handled at once; past it, 503 at once (load shedding, not queueing).
pub const MAX_CONCURRENT_REQUESTS: usize = 4096;

const V1: &str = "authentication.k8s.io/v1";
const V1BETA1: &str = "authentication.k8s.io/v1beta1";

/// The router with its middleware stack. Tests drive it directly.
pub fn router(state: Arc<AppState>) -> Router {
    let budget = state.reviewer.upstream().timeout() + Duration::from_secs(1);
    let metrics = Arc::clone(state.reviewer.metrics());
    Router::new()
        .route("/review", post(token_review))
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1beta1/tokenreviews",
            post(token_review),
        )
        .route("/auth", any(crate::ingress::auth))
        .route("/auth/", any(crate::ingress::auth))
        .route("/auth/{*path}", any(crate::ingress::auth))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
        // Outermost first.
        .layer(
            ServiceBuilder::new()
                // One span per request: method, path (never the query or headers: tokens
                // travel in headers), then the status, the decision's source and the
                // token's fingerprint once known; one line at debug when it ends.
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &axum::extract::Request| {
                            tracing::info_span!(
                                "request",
                                method = %request.method(),
                                path = request.uri().path(),
                                status = tracing::field::Empty,
                                source = tracing::field::Empty,
                                token = tracing::field::Empty,
                            )
                        })
                        .on_request(())
                        .on_response(
                            |response: &Response, latency: Duration, span: &tracing::Span| {
                                span.record("status", response.status().as_u16());
                                tracing::debug!(
                                    latency_us = latency.as_micros() as u64,
                                    "answered"
                                );
                            },
                        ),
                )
                // The layers below fail with errors (overload, timeout); answer them as 503.
                .layer(HandleErrorLayer::new(move |e: tower::BoxError| {
                    let metrics = Arc::clone(&metrics);
                    async move {
                        metrics.shed();
                        tracing::warn!(error = %e, "request shed");
                        ApiError::Overloaded(e.to_string())
                    }
                }))
                // Refuse, rather than queue, requests past the concurrency bound.
                .load_shed()
                .concurrency_limit(MAX_CONCURRENT_REQUESTS)
                // No request outlives the upstream budget by much, whatever happens below.
                .timeout(budget),
        )
        // Bodies larger than a TokenReview can be are refused with 413 before they are read.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The largest request head (request line and headers) read: room for a 16 KiB token
/// in a header and ordinary proxy headers. Past it, hyper answers 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown`
/// completes, then lets the connections finish their requests in progress.
///
/// Served through hyper-util rather than `axum::serve`, which sets no timer, so that
/// hyper's header-read timeout works: a client that dribbles its headers is dropped
/// after `limits.header_read_timeout`. HTTP/1.1 only (no HTTP/2, so no rapid-reset
/// exposure); at most `limits.max_connections` at once, past which a new connection is
/// closed at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => serve_with(listener, limits, router, shutdown).await,
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config)?;
            serve_with(listener, limits, router, shutdown).await
        }
    }
}

async fn serve_with<L>(
    mut listener: L,
    limits: Limits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: Send + 'static,
{
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(
                max = limits.max_connections,
                "connection refused: max_connections reached"
            );
            drop(io);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let metrics = state.reviewer.metrics();
    let (positive, negative) = state.reviewer.cache().len();
    metrics.set_cache_entries(CacheKind::Positive, positive);
    metrics.set_cache_entries(CacheKind::Negative, negative);
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    if state.is_draining() {
        return unavailable("not ready: shutting down\n".into());
    }
    if !state.reviewer.upstream().is_ready() {
        return unavailable(
            "not ready: the API server has not answered a TokenReview yet\n".into(),
        );
    }
    if let Some(keys) = state.reviewer.keys()
        && !keys.is_loaded()
    {
        let why = keys
            .last_error()
            .unwrap_or_else(|| "not fetched yet".into());
        return unavailable(format!(
            "not ready: the service-account issuer's keys are not loaded ({why})\n"
        ));
    }
    // A lagging revocation watch does not make the gate unready (verdicts fall back to
    // the max_ttl cap), but it is said here.
    match state.revocation.as_ref().and_then(|w| w.problem()) {
        Some(problem) => format!("ok\n{problem}\n").into_response(),
        None => "ok\n".into_response(),
    }
}

/// A TokenReview as callers send it: either API version, `kind` checked by hand. The
/// token is borrowed from the body (unless it has JSON escapes), not copied.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewRequest<'a> {
    #[serde(borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    spec: ReviewSpec<'a>,
}

/// A TokenReview's `spec`, read from the request and echoed in the answer as the API
/// server echoes it (k8s-openapi's `TokenReviewSpec`).
#[derive(Debug, Serialize, Default)]
pub struct ReviewSpec<'a> {
    /// The audiences asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// The token as the request's JSON spelt it, echoed as it came: the same string,
    /// copied rather than escaped again (a token is most of an answer's bytes).
    #[serde(rename = "token", skip_serializing_if = "Option::is_none")]
    token_json: Option<Cow<'a, RawValue>>,
    /// The token, borrowed from the request unless its JSON had escapes.
    #[serde(skip)]
    token: Option<Cow<'a, str>>,
}

impl ReviewSpec<'_> {
    /// A spec asking about `token` for `audiences`.
    pub fn new(token: &str, audiences: Option<Vec<String>>) -> ReviewSpec<'static> {
        let json = serde_json::to_string(token).expect("a string serialises");
        ReviewSpec {
            audiences,
            token_json: Some(Cow::Owned(
                RawValue::from_string(json).expect("a JSON string"),
            )),
            token: Some(Cow::Owned(token.to_owned())),
        }
    }

    /// The token asked about.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// Read as k8s-openapi (and Go's `encoding/json`) reads a `TokenReviewSpec`: an object
/// only, unknown fields ignored, the last of duplicate fields winning.
impl<'de: 'a, 'a> Deserialize<'de> for ReviewSpec<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Spec;
        impl<'de> serde::de::Visitor<'de> for Spec {
            type Value = ReviewSpec<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a TokenReviewSpec object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut spec = ReviewSpec::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "audiences" => spec.audiences = map.next_value()?,
                        "token" => {
                            let json: Option<&'de RawValue> = map.next_value()?;
                            spec.token = json.map(string_of).transpose()?;
                            spec.token_json = json.map(Cow::Borrowed);
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(spec)
            }
        }
        /// The string a JSON value spells, borrowed when it needs no unescaping.
        fn string_of<E: serde::de::Error>(json: &RawValue) -> Result<Cow<'_, str>, E> {
            let text = json.get();
            match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(plain) if !plain.contains('\\') => Ok(Cow::Borrowed(plain)),
                Some(_) => serde_json::from_str(text)
                    .map(Cow::Owned)
                    .map_err(|e| E::custom(format!("spec.token: {e}"))),
                None => Err(E::invalid_type(
                    serde::de::Unexpected::Other("a JSON value that is not a string"),
                    &"a string",
                )),
            }
        }
        d.deserialize_map(Spec)
    }
}

/// A TokenReview answer, written as k8s-openapi writes a `TokenReview` (fields in its
/// order) from the request's spec and the verdict, neither of them copied: a cache hit
/// costs no allocation but the body's.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewAnswer<'a> {
    api_version: &'a str,
    kind: &'static str,
    metadata: EmptyObject,
    spec: &'a ReviewSpec<'a>,
    status: StatusAnswer<'a>,
}

#[derive(Serialize)]
struct StatusAnswer<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    audiences: &'a [String],
    authenticated: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    /// The API server always sends `user`, empty when unauthenticated.
    #[serde(serialize_with = "user_or_empty")]
    user: Option<&'a User>,
}

fn user_or_empty<S: serde::Serializer>(user: &Option<&User>, s: S) -> Result<S::Ok, S::Error> {
    match user {
        Some(user) => user.serialize(s),
        None => EmptyObject.serialize(s),
    }
}

/// `{}`.
struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        s.serialize_map(Some(0))?.end()
    }
}

async fn token_review(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // Taken apart rather than extracted: the headers are read in place, not copied, and
    // the body is read only once the caller is authorized.
    let (parts, body) = request.into_parts();
    let result = answer_review(&state, &parts.headers, body).await;
    let outcome = match &result {
        Ok((_, true)) => Outcome::Authenticated,
        Ok((_, false)) => Outcome::Rejected,
        Err(_) => Outcome::Error,
    };
    state
        .reviewer
        .metrics()
        .request(Endpoint::TokenReview, outcome);
    match result {
        Ok((response, _)) => response,
        Err(e) => e.into_response(),
    }
}

/// The TokenReview answer, and whether the token was authenticated.
async fn answer_review(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Response, bool), ApiError> {
    authorize_caller(state, headers).await?;
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {e}"))
            }
        })?;
    let request: ReviewRequest<'_> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not a TokenReview: {e}")))?;
    let api_version = match request.api_version.as_deref() {
        None | Some(V1) => V1,
        Some(V1BETA1) => V1BETA1,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "apiVersion {other:?} is not served here; use {V1:?} or {V1BETA1:?}"
            )));
        }
    };
    if let Some(kind) = request.kind.as_deref().filter(|k| *k != "TokenReview") {
        return Err(ApiError::BadRequest(format!(
            "kind {kind:?} is not a TokenReview"
        )));
    }
    let token = request.spec.token().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::BadRequest(
            "token is required for TokenReview in authentication".into(),
        ));
    }
    let settings = state.reviewer.settings();
    let requested = request
        .spec
        .audiences
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or(&settings.policy.audiences);
    let decision = state.reviewer.review(token, requested).await?;
    record_decision(&decision);
    let authenticated = decision.verdict.authenticated;
    Ok((
        review_response(api_version, &request.spec, &decision),
        authenticated,
    ))
}

/// Adds the decision's source and the token's fingerprint to the request's span.
pub fn record_decision(decision: &Decision) {
    let span = tracing::Span::current();
    span.record("source", decision.source.as_str());
    span.record("token", tracing::field::display(decision.fingerprint));
}

/// The caller's own token goes through the same pipeline, for the API server's audiences;
/// then the allow-list decides.
async fn authorize_caller(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::Unauthorized);
    };
    let decision = state.reviewer.authenticate_caller(token).await?;
    if !decision.verdict.authenticated {
        return Err(ApiError::Unauthorized);
    }
    let Some(user) = decision.verdict.user.as_ref() else {
        return Err(ApiError::Unauthorized);
    };
    match state.access().check(user).await? {
        Ok(()) => Ok(()),
        Err(why) => Err(ApiError::Forbidden(format!(
            "tokenreviews.authentication.k8s.io is forbidden: User {:?} cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope: {why}",
            user.username()
        ))),
    }
}

/// The token of an `Authorization: Bearer` header (scheme case-insensitive, as RFC 6750).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn review_response(api_version: &str, spec: &ReviewSpec<'_>, decision: &Decision) -> Response {
    let body = review_body(api_version, spec, &decision.verdict);
    json_response(StatusCode::CREATED, body)
}

/// The body of the TokenReview answer to `spec`: the spec echoed, the verdict as `status`.
pub fn review_body(api_version: &str, spec: &ReviewSpec<'_>, v: &Verdict) -> Vec<u8> {
    let answer = ReviewAnswer {
        api_version,
        kind: "TokenReview",
        metadata: EmptyObject,
        spec,
        status: StatusAnswer {
            audiences: &v.audiences,
            authenticated: v.authenticated,
            error: &v.error,
            user: v.user.as_ref(),
        },
    };
    let token_len = spec.token_json.as_ref().map_or(0, |t| t.get().len());
    let mut body = Vec::with_capacity(token_len + 1024);
    serde_json::to_writer(&mut body, &answer).expect("a TokenReview serialises");
    body
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Every way a request fails, answered as a Kubernetes `Status`. The one mapping from
/// errors to responses; its messages never carry a token or an internal detail beyond
/// what the operator needs.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or invalid caller credential.
    #[error("Unauthorized")]
    Unauthorized,
    /// The caller may not review tokens.
    #[error("{0}")]
    Forbidden(String),
    /// The request is not a well-formed TokenReview.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes; a TokenReview is far smaller")]
    TooLarge,
    /// The API server could not answer; the token's fate is unknown.
    #[error("cannot review the token now: {0}")]
    Upstream(#[from] UpstreamError),
    /// Too many requests at once, or the request ran out of time.
    #[error("tokengate is overloaded or timed out: {0}")]
    Overloaded(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            ApiError::Upstream(_) | ApiError::Overloaded(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
        };
        let status = Status {
            code: Some(i32::from(code.as_u16())),
            message: Some(self.to_string()),
            reason: Some(reason.into()),
            status: Some("Failure".into()),
            ..Status::default()
        };
        let mut response = json_response(
            code,
            serde_json::to_vec(&status).expect("a Status serialises"),
        );
        if code == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
