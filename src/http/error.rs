//! The one mapping from errors to responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

use super::MAX_BODY_BYTES;
use crate::upstream::UpstreamError;

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
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

/// Every way a request fails. The one mapping from errors to responses: as a Kubernetes
/// `Status` on the TokenReview endpoints, as text on `/auth` and `/readyz`. What a
/// caller reads never carries a token or an internal error's text (a connect error, a
/// configuration hint): those go to the log, for the operator.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// No or invalid caller credential.
    #[error("Unauthorized")]
    Unauthorized,
    /// The caller may not review tokens, in the API server's words.
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
    #[error("cannot review the token now: {}", unavailable(.0))]
    Upstream(#[from] UpstreamError),
    /// Too many requests at once, or the request ran out of time.
    #[error("tokengate is overloaded or timed out: {0}")]
    Overloaded(String),
    /// The gate cannot serve yet, or no longer (`/readyz`).
    #[error("not ready: {0}")]
    NotReady(&'static str),
}

/// What a caller is told of an API-server failure: what happened, not the details.
fn unavailable(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Saturated(_) => "too many reviews are waiting on the API server".into(),
        UpstreamError::Timeout(_) => "the API server did not answer in time".into(),
        UpstreamError::Connect(_) => "the API server cannot be reached".into(),
        UpstreamError::Unauthorized => "the API server refused tokengate's credential".into(),
        UpstreamError::Forbidden(_) => "the API server forbids tokengate to review tokens".into(),
        UpstreamError::Status { code, .. } => format!("the API server answered HTTP {code}"),
        UpstreamError::BadResponse(_) => "the API server's answer was not usable".into(),
    }
}

impl ApiError {
    fn code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            ApiError::Upstream(_) | ApiError::Overloaded(_) | ApiError::NotReady(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
        }
    }

    /// The operator's part: the whole error, in the log.
    fn log(&self) {
        if let ApiError::Upstream(e) = self {
            tracing::warn!(error = %e, "the API server could not answer a review");
        }
    }

    /// The same answer as plain text, for `/auth` and `/readyz`.
    pub(super) fn into_text_response(self) -> Response {
        self.log();
        let (code, _) = self.code();
        with_retry_after(code, (code, format!("{self}\n")).into_response())
    }
}

/// A 503 says when to come back.
fn with_retry_after(code: StatusCode, mut response: Response) -> Response {
    if code == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let (code, reason) = self.code();
        let status = Status {
            code: Some(i32::from(code.as_u16())),
            message: Some(self.to_string()),
            reason: Some(reason.into()),
            status: Some("Failure".into()),
            ..Status::default()
        };
        let body = serde_json::to_vec(&status).expect("a Status serialises");
        with_retry_after(code, json_response(code, body))
    }
}
