//! Test knobs of the sim: injected TokenReview failures, added latency, the counter of
//! TokenReviews served, and the watch knobs (bookmark interval; expire, cut and deny
//! watches).
//!
//! Responsible for: the knob state (shared, lock-free except a short queue lock), the
//! wire names of failures (`POST /sim/fail {"kind": …}`), and how each failure looks on
//! the wire. `Reset` needs the connection itself: it pulls the connection's
//! [`KillSwitch`](super::server::KillSwitch) (set by the accept loop) and never answers.
//!
//! The same knobs are served over HTTP for `tokengate dev` users and scripts:
//! `POST /sim/fail {"count": 3, "kind": "503"}`, `POST /sim/latency {"millis": 50}`,
//! `POST /sim/rotate` (new signing key), `GET /sim/stats` (`{"tokenreviews": N}`), and
//! for watches `POST /sim/expire-watches`, `POST /sim/cut-watches`,
//! `POST /sim/bookmarks {"millis": N}`, `POST /sim/deny-watch {"deny": true}`.
//!
//! Not responsible for: deciding when a knob applies (the TokenReview handler in `api`
//! asks) or routing.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusDetails;

use super::api::Shared;
use super::server::KillSwitch;
use super::status::ApiError;
use super::status::status_response;

/// How an injected TokenReview failure behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this HTTP status and a Kubernetes `Status` body (429 adds
    /// `Retry-After: 1`, as the API server's max-in-flight filter does).
    Status(u16),
    /// Never answer (the connection stays open until the client gives up).
    Hang,
    /// Close the connection without a response (a TCP reset).
    Reset,
    /// Answer 201 with a truncated JSON body.
    BadJson,
    /// Answer 201 with a TokenReview body labelled `text/html` (a proxy's error page
    /// would look like this).
    WrongContentType,
    /// Answer 201 `authenticated: true` with no `status.user`.
    NoUser,
}

impl Failure {
    /// Parses the wire name used by `POST /sim/fail`: a status code (`"500"`, `"503"`,
    /// `"429"`, `"504"`, any of 400–599), `"hang"`, `"reset"`, `"bad-json"`,
    /// `"wrong-content-type"` or `"no-user"`.
    pub fn parse(kind: &str) -> Option<Failure> {
        match kind {
            "hang" => Some(Failure::Hang),
            "reset" => Some(Failure::Reset),
            "bad-json" => Some(Failure::BadJson),
            "wrong-content-type" => Some(Failure::WrongContentType),
            "no-user" => Some(Failure::NoUser),
            code => code
                .parse::<u16>()
                .ok()
                .filter(|c| (400..=599).contains(c))
                .map(Failure::Status),
        }
    }

    /// The response this failure gives (`Hang` and `Reset` never complete).
    pub(crate) async fn respond(self, kill: Option<KillSwitch>) -> Response {
        match self {
            Failure::Status(code) => failure_status(code),
            Failure::BadJson => (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                // Cut mid-value, like a proxy that dropped the rest of the body.
                r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{},"status":{"authenticated":tr"#,
            )
                .into_response(),
            Failure::WrongContentType => (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "text/html")],
                r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{},"spec":{},"status":{"authenticated":false}}"#,
            )
                .into_response(),
            Failure::NoUser => (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{},"spec":{},"status":{"authenticated":true,"audiences":["vault"]}}"#,
            )
                .into_response(),
            Failure::Hang => std::future::pending().await,
            Failure::Reset => {
                if let Some(kill) = kill {
                    kill.reset();
                }
                std::future::pending().await
            }
        }
    }
}

/// The API server's answer for an overloaded or failing request with this code.
fn failure_status(code: u16) -> Response {
    let (reason, message) = match code {
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.",
        ),
        500 => ("InternalError", "Internal error occurred: injected failure"),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        504 => (
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
        ),
        _ => ("", "injected failure"),
    };
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The API server's max-in-flight filter says when to come back, in both places.
    let details = (code == 429).then(|| StatusDetails {
        retry_after_seconds: Some(1),
        ..StatusDetails::default()
    });
    let mut response = status_response(status, reason, message, details);
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// How often an open watch that allows bookmarks gets one, unless set otherwise.
pub(crate) const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// The knob state a running sim shares between its handle and its handlers.
pub(crate) struct Knobs {
    failures: Mutex<VecDeque<Failure>>,
    latency_micros: AtomicU64,
    reviews: AtomicU64,
    access_reviews: AtomicU64,
    jwks: AtomicU64,
    discovery_down: AtomicBool,
    bookmark_millis: AtomicU64,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            failures: Mutex::default(),
            latency_micros: AtomicU64::default(),
            reviews: AtomicU64::default(),
            access_reviews: AtomicU64::default(),
            jwks: AtomicU64::default(),
            discovery_down: AtomicBool::default(),
            bookmark_millis: AtomicU64::new(millis(DEFAULT_BOOKMARK_INTERVAL)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Knobs {
    /// Makes the next `n` TokenReviews fail with `failure`, replacing whatever was still
    /// pending (`n = 0` clears it).
    pub(crate) fn fail_next(&self, n: u32, failure: Failure) {
        let mut queue = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        queue.clear();
        queue.extend(std::iter::repeat_n(failure, n as usize));
    }

    /// The failure the current TokenReview must show, if one is queued.
    pub(crate) fn take_failure(&self) -> Option<Failure> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Sets the latency added to every TokenReview.
    pub(crate) fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_micros.store(micros, Ordering::Relaxed);
    }

    /// The latency added to every TokenReview.
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_micros.load(Ordering::Relaxed))
    }

    /// Counts one TokenReview that reached the handler.
    pub(crate) fn count_review(&self) {
        self.reviews.fetch_add(1, Ordering::Relaxed);
    }

    /// TokenReviews that reached the handler so far, whatever their outcome.
    pub(crate) fn reviews(&self) -> u64 {
        self.reviews.load(Ordering::Relaxed)
    }

    /// Counts one JWKS document served.
    pub(crate) fn count_jwks(&self) {
        self.jwks.fetch_add(1, Ordering::Relaxed);
    }

    /// JWKS documents served so far.
    pub(crate) fn jwks(&self) -> u64 {
        self.jwks.load(Ordering::Relaxed)
    }

    /// Makes OIDC discovery and the JWKS answer 503 (or serve again).
    pub(crate) fn set_discovery_down(&self, down: bool) {
        self.discovery_down.store(down, Ordering::Relaxed);
    }

    /// Whether OIDC discovery and the JWKS answer 503.
    pub(crate) fn discovery_down(&self) -> bool {
        self.discovery_down.load(Ordering::Relaxed)
    }

    /// Sets how often watches that allow bookmarks get one (zero: never). Applies to
    /// watches opened afterwards.
    pub(crate) fn set_bookmark_interval(&self, interval: Duration) {
        self.bookmark_millis
            .store(millis(interval), Ordering::Relaxed);
    }

    /// How often watches that allow bookmarks get one (zero: never).
    pub(crate) fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(self.bookmark_millis.load(Ordering::Relaxed))
    }

    /// Counts one SubjectAccessReview that reached the handler.
    pub(crate) fn count_access_review(&self) {
        self.access_reviews.fetch_add(1, Ordering::Relaxed);
    }

    /// SubjectAccessReviews that reached the handler so far.
    pub(crate) fn access_reviews(&self) -> u64 {
        self.access_reviews.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------
// Over HTTP, under `/sim/` (unauthenticated: the sim is a test double)
// Test knobs (unauthenticated: the sim is a test double)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailKnob {
    #[serde(default = "one")]
    count: u32,
    kind: String,
}

fn one() -> u32 {
    1
}

/// `POST /sim/fail {"count": N, "kind": "503"}` (count defaults to 1).
pub(crate) async fn fail(
    State(cluster): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let knob: FailKnob = knob_body(body)?;
    let failure = Failure::parse(&knob.kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown failure kind {:?}: expected a status code (500, 503, 429, 504, …), \"hang\", \"reset\" or \"bad-json\"",
            knob.kind
        ))
    })?;
    cluster.knobs.fail_next(knob.count, failure);
    Ok(Json(json!({"queued": knob.count, "kind": knob.kind})).into_response())
}

/// `{"millis": N}`: the body of the latency and bookmark knobs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MillisKnob {
    millis: u64,
}

/// `POST /sim/latency {"millis": N}`.
pub(crate) async fn latency(
    State(cluster): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let knob: MillisKnob = knob_body(body)?;
    cluster
        .knobs
        .set_latency(Duration::from_millis(knob.millis));
    Ok(Json(json!({"millis": knob.millis})).into_response())
}

/// `POST /sim/rotate`: a new current signing key; answers its `kid`.
pub(crate) async fn rotate(State(cluster): Shared) -> Result<Response, ApiError> {
    let kid = cluster
        .keys
        .rotate()
        .map_err(|_| ApiError::bad_request("could not generate a new signing key"))?;
    Ok(Json(json!({"kid": kid})).into_response())
}

/// `POST /sim/expire-watches`: every open watch ends with `410 Gone` and the change log
/// is forgotten up to now, so clients must re-list. Answers how many watches were open.
pub(crate) async fn expire_watches(State(cluster): Shared) -> Response {
    let mut store = cluster.store();
    let open = store.events().subscribers();
    store.expire_watches();
    drop(store);
    Json(json!({"expired": open})).into_response()
}

/// `POST /sim/cut-watches`: every open watch's connection is dropped (TCP reset), with
/// no goodbye; clients resume from their last resourceVersion.
pub(crate) async fn cut_watches(State(cluster): Shared) -> Response {
    let store = cluster.store();
    let open = store.events().subscribers();
    store.events().cut();
    drop(store);
    Json(json!({"cut": open})).into_response()
}

/// `POST /sim/bookmarks {"millis": N}`: the bookmark interval of watches opened from now
/// on (0: none).
pub(crate) async fn bookmarks(
    State(cluster): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let knob: MillisKnob = knob_body(body)?;
    cluster
        .knobs
        .set_bookmark_interval(Duration::from_millis(knob.millis));
    Ok(Json(json!({"millis": knob.millis})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyWatchKnob {
    deny: bool,
}

/// `POST /sim/deny-watch {"deny": true}`: the reviewer loses (or regains) list and watch.
pub(crate) async fn deny_watch(
    State(cluster): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let knob: DenyWatchKnob = knob_body(body)?;
    cluster
        .store()
        .set_watcher(&super::reviewer_username(), !knob.deny);
    Ok(Json(json!({"deny": knob.deny})).into_response())
}

/// `GET /sim/stats`: `{"tokenreviews": N}`.
pub(crate) async fn stats(State(cluster): Shared) -> Response {
    let mut response = Json(json!({"tokenreviews": cluster.knobs.reviews()})).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn knob_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid knob: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_parse() {
        assert_eq!(Failure::parse("500"), Some(Failure::Status(500)));
        assert_eq!(Failure::parse("429"), Some(Failure::Status(429)));
        assert_eq!(Failure::parse("hang"), Some(Failure::Hang));
        assert_eq!(Failure::parse("reset"), Some(Failure::Reset));
        assert_eq!(Failure::parse("bad-json"), Some(Failure::BadJson));
        assert_eq!(Failure::parse("200"), None);
        assert_eq!(Failure::parse("boom"), None);
    }

    #[test]
    fn failures_are_consumed_one_per_review_and_a_new_order_replaces_the_old() {
        let knobs = Knobs::default();
        knobs.fail_next(2, Failure::Status(503));
        assert_eq!(knobs.take_failure(), Some(Failure::Status(503)));
        knobs.fail_next(1, Failure::Reset);
        assert_eq!(knobs.take_failure(), Some(Failure::Reset));
        assert_eq!(knobs.take_failure(), None);
        knobs.fail_next(5, Failure::Hang);
        knobs.fail_next(0, Failure::Hang);
        assert_eq!(knobs.take_failure(), None, "0 clears");
    }

    #[test]
    fn too_many_requests_carries_retry_after() {
        let response = failure_status(429);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("1"))
        );
    }
}
