//! Discovery documents of the sim: OIDC discovery and the JWKS (what relying parties
//! and the gate's signature checks read), and the API discovery kubectl reads before
//! `get`, `create` and `delete` (`/api`, `/api/v1`, `/apis`, `/version`).
//!
//! Responsible for: their shapes and headers (`Cache-Control: public, max-age=3600` on
//! the OIDC documents, as the API server sends), and the API server's strict `Accept`
//! check of the OIDC documents (go-restful's: each is served as one media type only).
//! Not for: the keys themselves (`keys`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::api::Shared;
use super::status::ApiError;

/// `GET /version`.
pub(crate) async fn version() -> Response {
    Json(
        json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-tokengate-sim",
                "platform": "tokengate/sim"}),
    )
    .into_response()
}

/// `GET /api`: the core group's versions.
pub(crate) async fn core_versions(State(cluster): Shared) -> Response {
    let host = cluster.url.split("://").nth(1).unwrap_or_default();
    Json(json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}))
    .into_response()
}

/// `GET /apis`: the groups served (authentication.k8s.io only).
pub(crate) async fn groups() -> Response {
    let version = json!({"groupVersion": "authentication.k8s.io/v1", "version": "v1"});
    Json(
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": "authentication.k8s.io", "versions": [version], "preferredVersion": version}
        ]}),
    )
    .into_response()
}

fn resource(name: &str, kind: &str, namespaced: bool, verbs: &[&str], short: &[&str]) -> Value {
    let mut r = json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
                       "verbs": verbs});
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    r
}

/// `GET /api/v1`: the core resources served.
pub(crate) async fn core_v1() -> Response {
    let crud = ["create", "delete", "get", "list", "watch"];
    Json(
        json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            resource("pods", "Pod", true, &crud, &["po"]),
            resource("secrets", "Secret", true, &["list", "watch"], &[]),
            resource("serviceaccounts", "ServiceAccount", true, &crud, &["sa"]),
            resource("serviceaccounts/token", "TokenRequest", true, &["create"], &[]),
        ]}),
    )
    .into_response()
}

/// `GET /apis/authentication.k8s.io/v1`.
pub(crate) async fn authentication_v1() -> Response {
    Json(json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": "authentication.k8s.io/v1", "resources": [
        resource("tokenreviews", "TokenReview", false, &["create"], &[]),
    ]}))
    .into_response()
}

/// `GET /.well-known/openid-configuration`.
pub(crate) async fn openid_configuration(State(cluster): Shared, headers: HeaderMap) -> Response {
    if let Err(e) = accepts(&headers, JSON) {
        return e.into_response();
    }
    if cluster.knobs.discovery_down() {
        return ApiError::unavailable().into_response();
    }
    let doc = json!({
        "issuer": cluster.issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", cluster.url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    cacheable(JSON, &doc)
}

/// `GET /openid/v1/jwks`: every signing key, current and retired.
pub(crate) async fn jwks(State(cluster): Shared, headers: HeaderMap) -> Response {
    if let Err(e) = accepts(&headers, JWKS) {
        return e.into_response();
    }
    if cluster.knobs.discovery_down() {
        return ApiError::unavailable().into_response();
    }
    cluster.knobs.count_jwks();
    cacheable(JWKS, &cluster.keys.jwks())
}

const JSON: &str = "application/json";
const JWKS: &str = "application/jwk-set+json";

/// Whether `Accept` lets the API server serve `produced`, by go-restful's rule: only the
/// first `Accept` header counts; none at all is `*/*`; one of its media ranges, without
/// parameters, must be `*/*` or exactly `produced` (case and all: `application/*` or
/// `application/json` for the JWKS get 406).
fn accepts(headers: &HeaderMap, produced: &str) -> Result<(), ApiError> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let accept = String::from_utf8_lossy(accept.as_bytes());
    let ok = accept.is_empty()
        || accept.split(',').any(|range| {
            let media = range.split(';').next().unwrap_or_default().trim();
            media == "*/*" || media == produced
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable(format!(
            "406: Not Acceptable\n\nAvailable representations: {produced}"
        )))
    }
}

/// The API server serves both discovery documents with an hour's public caching.
fn cacheable(content_type: &'static str, doc: &Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        doc.to_string(),
    )
        .into_response()
}
