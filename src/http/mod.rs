//! The HTTP surface: the router, its middleware, the serve loop, and the one place
//! where errors become responses.
//!
//! Responsible for: routing to the TokenReview endpoints ([`tokenreview`]), the ingress
//! auth hook ([`auth`]), the probes and metrics ([`probes`]); the limits that protect
//! the process (body and head size, concurrency, time: [`middleware`], [`serve`]); and
//! answering every failure through [`error::ApiError`].
//!
//! Not responsible for: deciding anything about a token (see `review`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};

mod auth;
mod bearer;
pub(crate) mod error;
mod middleware;
mod probes;
mod serve;
mod state;
mod tokenreview;

pub use bearer::bearer;
pub use middleware::with_middleware;
pub use serve::serve;
pub use state::AppState;

/// The largest request body read (a TokenReview is about 1–2 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests handled at once; past it, 503 at once (load shedding, not queueing).
pub(crate) const MAX_CONCURRENT_REQUESTS: usize = 4096;

/// The router with its middleware stack. Tests drive it directly.
pub fn router(state: Arc<AppState>) -> Router {
    let budget = state.reviewer.upstream().timeout() + Duration::from_secs(1);
    let metrics = Arc::clone(state.reviewer.metrics());
    let routes = Router::new()
        .route("/review", post(tokenreview::token_review))
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(tokenreview::token_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1beta1/tokenreviews",
            post(tokenreview::token_review),
        )
        .route("/auth", any(auth::auth))
        .route("/auth/", any(auth::auth))
        .route("/auth/{*path}", any(auth::auth))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics_text))
        .fallback(tokenreview::not_found)
        .with_state(state);
    with_middleware(routes, budget, metrics)
}
