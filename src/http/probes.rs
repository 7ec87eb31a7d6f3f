//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::metrics::CacheKind;

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
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

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let not_ready = |why| ApiError::NotReady(why).into_text_response();
    if state.is_draining() {
        return not_ready("shutting down");
    }
    if !state.reviewer.upstream().is_ready() {
        return not_ready("the API server has not answered a TokenReview yet");
    }
    if state.reviewer.keys().is_some_and(|keys| !keys.is_loaded()) {
        // Why is in the log, where each failed fetch is reported.
        return not_ready("the service-account issuer's keys are not loaded");
    }
    // A lagging revocation watch does not make the gate unready (verdicts fall back to
    // the max_ttl cap), but it is said here.
    match state.revocation.as_ref().and_then(|w| w.problem()) {
        Some(problem) => format!("ok\n{problem}\n").into_response(),
        None => "ok\n".into_response(),
    }
}
