//! The TokenReview endpoints (`POST /review`,
//! `POST /apis/authentication.k8s.io/{v1,v1beta1}/tokenreviews`), answered exactly as the
//! API server answers (201, `spec` echoed, `status` always present, the request's own API
//! version back), with the caller authenticated and authorized first.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::bearer::caller_token;
use super::error::{ApiError, json_response};
use super::{AppState, MAX_BODY_BYTES};
use crate::metrics::{Endpoint, Outcome};
use crate::review::Settings;
use crate::verdict::Decision;
use crate::wire::{self, ReviewRequest, ReviewSpec};

const V1: &str = "authentication.k8s.io/v1";
const V1BETA1: &str = "authentication.k8s.io/v1beta1";

pub(super) async fn token_review(State(state): State<Arc<AppState>>, request: Request) -> Response {
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
pub(super) fn record_decision(decision: &Decision) {
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

fn review_response(api_version: &str, spec: &ReviewSpec<'_>, decision: &Decision) -> Response {
    let body = wire::answer(api_version, spec, &decision.verdict);
    json_response(StatusCode::CREATED, body)
}

/// Any other path.
pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound
}
