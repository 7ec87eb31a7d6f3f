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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

use crate::config::Limits;
pub use crate::gate::AppState;
use crate::metrics::{CacheKind, Endpoint, Metrics, Outcome};
use crate::review::{Decision, Settings};
use crate::upstream::UpstreamError;
use crate::wire::{self, ReviewRequest, ReviewSpec};

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
    let routes = Router::new()
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
        .fallback(not_found)
        .with_state(state);
    with_middleware(routes, budget, metrics)
}

/// `routes` under the gate's middleware stack: a span per request, then [`Admission`]:
/// past [`MAX_CONCURRENT_REQUESTS`] in progress a request is refused, and one that takes
/// longer than `budget` is given up; both answered 503 and counted as shed in `metrics`.
/// Public for the benchmarks, which measure the stack around a handler that does nothing.
pub fn with_middleware(routes: Router, budget: Duration, metrics: Arc<Metrics>) -> Router {
    with_limits(routes, MAX_CONCURRENT_REQUESTS, budget, metrics)
}

fn with_limits(routes: Router, max: usize, budget: Duration, metrics: Arc<Metrics>) -> Router {
    let admission = Admission(Arc::new(AdmissionState {
        in_progress: AtomicUsize::new(0),
        max,
        budget,
        metrics,
    }));
    // One layer, not one each: axum boxes every route again for each, and clones the
    // box on every request. Outermost first: the span covers refused requests too.
    routes.layer(
        tower::ServiceBuilder::new()
            .layer(TraceRequests)
            .layer(admission),
    )
}

/// Refuses, rather than queues, a request past `max` in progress, and gives up one that
/// takes longer than `budget` (no request outlives the upstream budget by much, whatever
/// happens below): both answered 503, as a Kubernetes `Status` that says which.
///
/// In place of tower's `load_shed`, `concurrency_limit` and `timeout` under axum's
/// `HandleErrorLayer`, which for every request boxed a future, allocated the semaphore's
/// reusable future, locked its waiter list on release and read the clock. Under load that
/// stack cost about a twentieth of a cached review's CPU (`cargo bench --bench load`, with
/// and without it). Here: one atomic counter, and a timer started only when a request
/// has to wait for something, so the budget counts from its first wait, microseconds
/// after it arrived.
#[derive(Clone)]
struct Admission(Arc<AdmissionState>);

struct AdmissionState {
    in_progress: AtomicUsize,
    max: usize,
    budget: Duration,
    metrics: Arc<Metrics>,
}

impl AdmissionState {
    fn shed(&self, why: String) -> Response {
        self.metrics.shed();
        tracing::warn!(reason = %why, "request shed");
        ApiError::Overloaded(why).into_response()
    }
}

impl<S> tower::Layer<S> for Admission {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// A service whose requests [`Admission`] admits.
#[derive(Clone)]
struct Admitted<S> {
    inner: S,
    admission: Admission,
}

/// A request in progress; counted until dropped.
struct InProgress(Arc<AdmissionState>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Release);
    }
}

impl<S> tower::Service<Request> for Admitted<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = AdmittedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = &self.admission.0;
        if state.in_progress.fetch_add(1, Ordering::Acquire) >= state.max {
            state.in_progress.fetch_sub(1, Ordering::Release);
            let why = format!("more than {} requests in progress", state.max);
            return AdmittedFuture::Refused {
                response: Some(state.shed(why)),
            };
        }
        AdmittedFuture::Admitted {
            inner: self.inner.call(request),
            deadline: None,
            in_progress: InProgress(Arc::clone(state)),
        }
    }
}

pin_project_lite::pin_project! {
    /// An admitted request's answer, or the refusal of one that was not.
    #[project = AdmittedProjection]
    enum AdmittedFuture<F> {
        Admitted {
            #[pin]
            inner: F,
            #[pin]
            deadline: Option<tokio::time::Sleep>,
            in_progress: InProgress,
        },
        Refused {
            response: Option<Response>,
        },
    }
}

impl<F> Future for AdmittedFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            AdmittedProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after it completed")))
            }
            AdmittedProjection::Admitted {
                inner,
                mut deadline,
                in_progress,
            } => {
                if let Poll::Ready(answer) = inner.poll(cx) {
                    return Poll::Ready(answer);
                }
                let state = &in_progress.0;
                if deadline.is_none() {
                    deadline.set(Some(tokio::time::sleep(state.budget)));
                }
                let expired = deadline.as_pin_mut().expect("set above").poll(cx);
                std::task::ready!(expired);
                let why = format!("no answer within {:?}", state.budget);
                Poll::Ready(Ok(state.shed(why)))
            }
        }
    }
}

/// Gives each request a span: method, path (never the query or headers: tokens travel
/// in headers), then the status, and the decision's source and the token's fingerprint
/// once known; and one line at debug when the answer is ready, with the time it took.
///
/// In place of tower-http's `TraceLayer`, which reads the clock six times a request and
/// wraps every response body: that cost a tenth of a cached review's time in-process
/// (`cargo bench --bench micro -- router`). Here the clock is read only when the debug
/// line is written.
#[derive(Clone, Copy)]
struct TraceRequests;

impl<S> tower::Layer<S> for TraceRequests {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced(inner)
    }
}

/// A service whose requests [`TraceRequests`] traces.
#[derive(Clone)]
struct Traced<S>(S);

impl<S> tower::Service<Request> for Traced<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = request.uri().path(),
            status = tracing::field::Empty,
            source = tracing::field::Empty,
            token = tracing::field::Empty,
        );
        let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let inner = span.in_scope(|| self.0.call(request));
        TracedFuture {
            inner,
            span,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, polled inside the request's span.
    struct TracedFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        started: Option<Instant>,
    }
}

impl<F, E> Future for TracedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.span.record("status", response.status().as_u16());
            if let Some(started) = this.started {
                let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracing::debug!(latency_us, "answered");
            }
        }
        Poll::Ready(result)
    }
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
        let connection = async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        };
        tokio::spawn(connection);
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
    // One reading of the clock judges both the caller's token and the reviewed one.
    let now = state.reviewer.now();
    let settings = authorize_caller(state, headers, now).await?;
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
    let requested = request
        .spec
        .audiences
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or(&settings.policy.audiences);
    let decision = state.reviewer.review(token, requested, now).await?;
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
/// then the allow-list decides. Returns the settings the caller was judged under.
async fn authorize_caller(
    state: &AppState,
    headers: &HeaderMap,
    now: std::time::SystemTime,
) -> Result<Arc<Settings>, ApiError> {
    let Some(token) = caller_token(headers) else {
        return Err(ApiError::Unauthorized);
    };
    let (decision, settings) = state.reviewer.authenticate_caller(token, now).await?;
    if !decision.verdict.authenticated {
        return Err(ApiError::Unauthorized);
    }
    let Some(user) = decision.verdict.user.as_ref() else {
        return Err(ApiError::Unauthorized);
    };
    let access = state.access();
    match access.check(user).await? {
        Ok(()) => Ok(settings),
        // The API server's words, its authorizer's reason after them when there is one.
        Err(why) => Err(ApiError::Forbidden(format!(
            "tokenreviews.authentication.k8s.io is forbidden: User {:?} cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope{}",
            user.username(),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        ))),
    }
}

/// Any other path.
async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// The token of an `Authorization: Bearer` header (scheme case-insensitive, as RFC 6750),
/// when the header's value is visible ASCII (`HeaderValue::to_str`).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.get(bearer_token(value.as_bytes())?)
}

/// Where the token is in an `Authorization` value: after the scheme `Bearer` (any case)
/// and the first space, without the spaces and tabs around it; `None` for another scheme
/// or no token.
fn bearer_token(value: &[u8]) -> Option<std::ops::Range<usize>> {
    let space = value.iter().position(|&b| b == b' ')?;
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = space + 1 + value[space + 1..].iter().take_while(|b| blank(b)).count();
    let end = value.len() - value[start..].iter().rev().take_while(|b| blank(b)).count();
    (value[..space].eq_ignore_ascii_case(b"bearer") && start < end).then_some(start..end)
}

/// The caller's token on the TokenReview endpoints, read as the API server's bearer-token
/// authenticator reads it, so that a caller is who the API server would take it for: the
/// first `Authorization` header, trimmed, `Bearer` in any case, then the word after the
/// first space. `Bearer  TOKEN` (two spaces) or `Bearer\tTOKEN` carries no token.
/// Only the token itself must be text (visible ASCII or tabs); what follows it is ignored,
/// as the API server ignores it.
fn caller_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let token = value.get(caller_token_range(value)?)?;
    let text = token
        .iter()
        .all(|b| *b == b'\t' || (b' '..=b'~').contains(b));
    if text {
        std::str::from_utf8(token).ok()
    } else {
        None
    }
}

/// Go's `strings.TrimSpace`, then `strings.SplitN(value, " ", 3)`: the second part, when
/// the first is `bearer` in any case and the second is not empty.
fn caller_token_range(value: &[u8]) -> Option<std::ops::Range<usize>> {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = value.iter().position(|b| !space(b))?;
    let end = value.len() - value.iter().rev().take_while(|b| space(b)).count();
    let scheme_end = start + value[start..end].iter().position(|&b| b == b' ')?;
    let token_start = scheme_end + 1;
    let token_end = value[token_start..end]
        .iter()
        .position(|&b| b == b' ')
        .map_or(end, |i| token_start + i);
    (value[start..scheme_end].eq_ignore_ascii_case(b"bearer") && token_start < token_end)
        .then_some(token_start..token_end)
}

fn review_response(api_version: &str, spec: &ReviewSpec<'_>, decision: &Decision) -> Response {
    let body = wire::answer(api_version, spec, &decision.verdict);
    json_response(StatusCode::CREATED, body)
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
    /// No such endpoint (a namespaced TokenReview URL among them: TokenReviews are
    /// cluster-scoped), in the API server's words.
    #[error("the server could not find the requested resource")]
    NotFound,
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
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    /// A router whose one route waits until `release` fires, telling `entered` first.
    fn waiting_router(
        max: usize,
        budget: Duration,
        metrics: &Arc<Metrics>,
    ) -> (
        Router,
        tokio::sync::mpsc::UnboundedReceiver<()>,
        Arc<tokio::sync::Notify>,
    ) {
        let (entered, entered_rx) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::clone(&release);
        let routes = Router::new().route(
            "/wait",
            get(move || {
                let entered = entered.clone();
                let gate = Arc::clone(&gate);
                async move {
                    // Created before `entered` is told: `notify_waiters` then reaches it.
                    let released = gate.notified();
                    entered.send(()).expect("the test listens");
                    released.await;
                    "done"
                }
            }),
        );
        let router = with_limits(routes, max, budget, Arc::clone(metrics));
        (router, entered_rx, release)
    }

    async fn call(router: &Router) -> (StatusCode, String) {
        let request = Request::get("/wait")
            .body(Body::empty())
            .expect("a request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
    }

    fn spawn_call(router: &Router) -> tokio::task::JoinHandle<(StatusCode, String)> {
        let router = router.clone();
        tokio::spawn(async move { call(&router).await })
    }

    fn shed_count(metrics: &Metrics) -> String {
        metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("tokengate_requests_shed_total "))
            .expect("the shed counter is exported")
            .to_owned()
    }

    #[tokio::test]
    async fn requests_past_the_bound_are_refused_at_once_and_admitted_again_after() {
        let metrics = Arc::new(Metrics::new());
        let (router, mut entered, release) = waiting_router(2, Duration::from_secs(60), &metrics);
        let first = spawn_call(&router);
        let second = spawn_call(&router);
        entered.recv().await.expect("the first is in progress");
        entered.recv().await.expect("the second is in progress");

        let (status, body) = call(&router).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("tokengate is overloaded or timed out: more than 2 requests in progress"),
            "{body}"
        );
        assert!(body.contains(r#""reason":"ServiceUnavailable""#), "{body}");
        assert_eq!(shed_count(&metrics), "tokengate_requests_shed_total 1");

        release.notify_waiters();
        assert_eq!(
            first.await.expect("joined"),
            (StatusCode::OK, "done".into())
        );
        assert_eq!(
            second.await.expect("joined"),
            (StatusCode::OK, "done".into())
        );
        // Both finished, so both places are free again.
        let third = spawn_call(&router);
        let fourth = spawn_call(&router);
        // Bounded waits: were either refused, its `entered` would never come.
        for which in ["third", "fourth"] {
            let admitted = tokio::time::timeout(Duration::from_secs(10), entered.recv()).await;
            assert!(matches!(admitted, Ok(Some(()))), "the {which} is admitted");
        }
        release.notify_waiters();
        assert_eq!(third.await.expect("joined").0, StatusCode::OK);
        assert_eq!(fourth.await.expect("joined").0, StatusCode::OK);
        assert_eq!(shed_count(&metrics), "tokengate_requests_shed_total 1");
    }

    #[tokio::test]
    async fn a_request_that_outlives_its_budget_is_given_up_with_503() {
        let metrics = Arc::new(Metrics::new());
        let (router, _entered, _release) = waiting_router(4, Duration::from_millis(50), &metrics);
        // Each is given up (the timer is what answers: without it this would hang), and
        // no longer counts as in progress once it is: a leak would refuse the fifth.
        for n in 1..=5 {
            let answer = tokio::time::timeout(Duration::from_secs(10), call(&router)).await;
            let (status, body) = answer.expect("the budget answers, not the test's timeout");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "request {n}");
            assert!(
                body.contains("tokengate is overloaded or timed out: no answer within 50ms"),
                "request {n}: {body}"
            );
        }
        assert_eq!(shed_count(&metrics), "tokengate_requests_shed_total 5");
    }

    mod bearer {
        use proptest::prelude::*;

        use super::super::{bearer, caller_token};
        use axum::http::{HeaderMap, HeaderValue, header};

        /// The API server's reading (k8s.io/apiserver's bearertoken), as written there.
        fn reference(value: &HeaderValue) -> Option<String> {
            let value = String::from_utf8_lossy(value.as_bytes());
            let value = value.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
            let mut parts = value.splitn(3, ' ');
            let (scheme, token) = (parts.next()?, parts.next()?);
            let text = token.chars().all(|c| c == '\t' || (' '..='~').contains(&c));
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && text)
                .then(|| token.to_owned())
        }

        fn headers(value: &[u8]) -> Option<HeaderMap> {
            let value = HeaderValue::from_bytes(value).ok()?;
            Some(HeaderMap::from_iter([(header::AUTHORIZATION, value)]))
        }

        #[test]
        fn auth_reads_the_token_of_a_bearer_value_as_rfc_6750() {
            for (value, token) in [
                ("Bearer abc.def", Some("abc.def")),
                ("bEaReR \t abc \t", Some("abc")),
                ("Bearer a b", Some("a b")),
                ("Bearer  ", None),
                ("Bearer", None),
                ("Bearer\tabc", None),
                ("Basic abc", None),
            ] {
                let map = headers(value.as_bytes()).unwrap();
                assert_eq!(bearer(&map), token, "{value:?}");
            }
            assert_eq!(bearer(&HeaderMap::new()), None);
        }

        #[test]
        fn a_caller_token_is_read_as_the_api_server_reads_it() {
            for (value, token) in [
                ("Bearer abc.def", Some("abc.def")),
                (" bEaReR abc \t", Some("abc")),
                ("Bearer a b", Some("a")),
                ("Bearer  abc", None),
                ("Bearer \tabc", Some("\tabc")),
                ("Bearer\tabc", None),
                ("Bearer", None),
                ("Basic abc", None),
            ] {
                let map = headers(value.as_bytes()).unwrap();
                assert_eq!(caller_token(&map), token, "{value:?}");
                assert_eq!(
                    caller_token(&map).map(str::to_owned),
                    reference(&map[header::AUTHORIZATION]),
                    "{value:?}"
                );
            }
            assert_eq!(caller_token(&HeaderMap::new()), None);
        }

        proptest! {
            /// `caller_token` reads every value as the API server does, bytes that are
            /// not text included.
            #[test]
            fn a_caller_token_of_any_bytes_is_read_as_the_api_server_reads_it(
                value in proptest::collection::vec(
                    prop::sample::select(b"BbEeAaRrx .\t\x80\xe9\x7f\x01".to_vec()), 0..14),
                prefix in prop::sample::select(vec!["", "Bearer ", "bearer\t ", "Basic "]),
            ) {
                let value = [prefix.as_bytes(), &value].concat();
                let Some(map) = headers(&value) else { return Ok(()) };
                prop_assert_eq!(
                    caller_token(&map).map(str::to_owned),
                    reference(&map[header::AUTHORIZATION])
                );
            }
        }
    }
}
