//! The sim's HTTP surface: the router, caller authentication, request decoding, and the
//! TokenReview and TokenRequest handlers.
//!
//! Responsible for: the route table (handlers of pods and service accounts live in
//! `objects`, lists and watches in `watch`, discovery documents in `discovery`, knobs in
//! `knobs`), caller authentication (a bearer token the sim itself issued, for the API
//! audiences) and authorization (the RBAC table, for tokenreviews), decoding bodies with
//! `Status` errors. Every failure is an [`ApiError`], rendered as a `Status` body.
//!
//! Not responsible for: the authenticator's rules (see `review`), TokenRequest rules and
//! shared state (see `cluster`), connections (see `server`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewStatus};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::cluster::Cluster;
use super::review::{Authenticated, review_status};
use super::server::KillSwitch;
use super::status::ApiError;
use super::{discovery, knobs, objects, watch};

/// The API group of TokenReview.
const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// The sim's routes over `cluster`.
pub(crate) fn router(cluster: Arc<Cluster>) -> Router {
    let ns = "/api/v1/namespaces/{ns}";
    Router::new()
        // The authentication API.
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review_v1),
        )
        .route(
            "/apis/authentication.k8s.io/v1beta1/tokenreviews",
            post(token_review_v1beta1),
        )
        // The authorization API, as far as the RBAC table answers it.
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(subject_access_review),
        )
        .route(
            &format!("{ns}/serviceaccounts/{{name}}/token"),
            post(token_request),
        )
        // Objects.
        .route(
            &format!("{ns}/serviceaccounts"),
            get(watch::in_namespace::<ServiceAccount>).post(objects::create::<ServiceAccount>),
        )
        .route(
            &format!("{ns}/serviceaccounts/{{name}}"),
            get(objects::get_one::<ServiceAccount>).delete(objects::delete_service_account),
        )
        .route(
            &format!("{ns}/pods"),
            get(watch::in_namespace::<Pod>).post(objects::create_pod),
        )
        .route(
            &format!("{ns}/pods/{{name}}"),
            get(objects::get_one::<Pod>).delete(objects::delete_pod),
        )
        .route(&format!("{ns}/secrets"), get(watch::in_namespace::<Secret>))
        // Lists and watches across namespaces (`watch=true`), for informers.
        .route(
            "/api/v1/serviceaccounts",
            get(watch::all_namespaces::<ServiceAccount>),
        )
        .route("/api/v1/pods", get(watch::all_namespaces::<Pod>))
        .route("/api/v1/secrets", get(watch::all_namespaces::<Secret>))
        // Discovery.
        .route(
            "/.well-known/openid-configuration",
            get(discovery::openid_configuration),
        )
        .route("/openid/v1/jwks", get(discovery::jwks))
        .route("/api", get(discovery::core_versions))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis", get(discovery::groups))
        .route(
            "/apis/authentication.k8s.io/v1",
            get(discovery::authentication_v1),
        )
        .route("/version", get(discovery::version))
        // Test knobs.
        .route("/sim/fail", post(knobs::fail))
        .route("/sim/latency", post(knobs::latency))
        .route("/sim/rotate", post(knobs::rotate))
        .route("/sim/stats", get(knobs::stats))
        .route("/sim/expire-watches", post(knobs::expire_watches))
        .route("/sim/cut-watches", post(knobs::cut_watches))
        .route("/sim/bookmarks", post(knobs::bookmarks))
        .route("/sim/deny-watch", post(knobs::deny_watch))
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // The sim speaks JSON only: a protobuf or YAML body gets the API server's 415
        // (kubectl's `create token` and `create sa` send protobuf and fail here; `get`,
        // `delete` and `create --raw` work).
        .layer(axum::middleware::from_fn(json_bodies_only))
        .with_state(cluster)
}

/// The router's state, as handlers extract it.
pub(crate) type Shared = State<Arc<Cluster>>;

// ---------------------------------------------------------------------------------------
// Caller authentication and request decoding

/// The bearer token of a request, read as the API server's bearer-token authenticator
/// reads it: trimmed, `Bearer` in any case, the second space-separated word.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let mut parts = value.split(' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Authenticates the caller with a token the sim issued, for the API audiences.
/// Anonymous requests are refused (the sim runs with `--anonymous-auth=false`).
pub(crate) fn caller(cluster: &Cluster, headers: &HeaderMap) -> Result<Authenticated, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    cluster
        .authenticate(token, &[], SystemTime::now())
        .map_err(|_| ApiError::unauthorized())
}

/// Decodes a request body as `T`, accepting `apiVersion` `api_version` (or none) and
/// `kind` `T::KIND` (or none), with the API server's `BadRequest` wording on failure.
pub(crate) fn decode<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    api_version: &str,
    kind: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: not a JSON object",
        ));
    };
    if let Some(got) = object.remove("apiVersion")
        && got.as_str() != Some(api_version)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({api_version})",
            got.as_str().unwrap_or_default()
        )));
    }
    if let Some(got) = object.remove("kind")
        && got.as_str() != Some(kind)
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({}) does not match the expected kind ({kind})",
            got.as_str().unwrap_or_default()
        )));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: {e}",
            api_version.rsplit('/').next().unwrap_or(api_version)
        ))
    })
}

pub(crate) fn json_response(code: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => ApiError::bad_request("the object could not be encoded").into_response(),
    }
}

/// Refuses request bodies that are not JSON with 415, as the API server refuses media
/// types it does not know.
async fn json_bodies_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media.is_empty() || media == "application/json" || media.ends_with("+json") {
        return next.run(request).await;
    }
    ApiError {
        code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        reason: "UnsupportedMediaType",
        message: format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json; got {media}"
        ),
        details: None,
    }
    .into_response()
}

// ---------------------------------------------------------------------------------------
// TokenReview

async fn token_review_v1(
    State(cluster): Shared,
    kill: Option<Extension<KillSwitch>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    token_review(cluster, kill.map(|Extension(k)| k), headers, body, "v1").await
}

async fn token_review_v1beta1(
    State(cluster): Shared,
    kill: Option<Extension<KillSwitch>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    token_review(
        cluster,
        kill.map(|Extension(k)| k),
        headers,
        body,
        "v1beta1",
    )
    .await
}

/// `POST /apis/authentication.k8s.io/{version}/tokenreviews`: knobs first (latency, an
/// injected failure), then caller authentication and authorization, then the review.
async fn token_review(
    cluster: Arc<Cluster>,
    kill: Option<KillSwitch>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    version: &str,
) -> Response {
    cluster.knobs.count_review();
    let latency = cluster.knobs.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(failure) = cluster.knobs.take_failure() {
        return failure.respond(kill).await;
    }
    match review(&cluster, &headers, body, version) {
        Ok(review) => json_response(StatusCode::CREATED, &review),
        Err(err) => err.into_response(),
    }
}

fn review(
    cluster: &Cluster,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    version: &str,
) -> Result<Value, ApiError> {
    let user = caller(cluster, headers)?;
    if !cluster.store().may_review(user.username()) {
        return Err(ApiError::forbidden(
            user.username(),
            "create",
            "tokenreviews",
            AUTHENTICATION_GROUP,
        ));
    }
    let api_version = format!("{AUTHENTICATION_GROUP}/{version}");
    let mut review: TokenReview = decode(body, &api_version, "TokenReview")?;
    let token = review.spec.token.as_deref().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let requested = review.spec.audiences.clone().unwrap_or_default();
    let outcome = cluster.authenticate(token, &requested, SystemTime::now());
    review.status = Some(review_status(outcome));
    let mut value = serde_json::to_value(&review)
        .map_err(|_| ApiError::bad_request("the review could not be encoded"))?;
    // v1beta1 has the same shape; only the version differs.
    value["apiVersion"] = Value::String(api_version);
    Ok(value)
}

// ---------------------------------------------------------------------------------------
// SubjectAccessReview

const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";

/// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`, answered from the RBAC
/// table: holders of `system:auth-delegator` (the table) may `create` `tokenreviews` in
/// `authentication.k8s.io` (and create SubjectAccessReviews themselves); nothing else is
/// granted to anyone.
async fn subject_access_review(
    State(cluster): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    cluster.knobs.count_access_review();
    let user = caller(&cluster, &headers)?;
    let store = cluster.store();
    if !store.may_review(user.username()) {
        return Err(ApiError::forbidden(
            user.username(),
            "create",
            "subjectaccessreviews",
            AUTHORIZATION_GROUP,
        ));
    }
    let mut review: SubjectAccessReview = decode(
        body,
        &format!("{AUTHORIZATION_GROUP}/v1"),
        "SubjectAccessReview",
    )?;
    let asks_to_review_tokens = review.spec.resource_attributes.as_ref().is_some_and(|a| {
        a.group.as_deref() == Some(AUTHENTICATION_GROUP)
            && a.resource.as_deref() == Some("tokenreviews")
            && a.verb.as_deref() == Some("create")
    });
    let subject = review.spec.user.clone().unwrap_or_default();
    let allowed = asks_to_review_tokens && store.may_review(&subject);
    review.status = Some(SubjectAccessReviewStatus {
        allowed,
        reason: allowed.then(|| {
            format!("RBAC: allowed by ClusterRoleBinding of ClusterRole \"system:auth-delegator\" to {subject:?}")
        }),
        ..SubjectAccessReviewStatus::default()
    });
    Ok(json_response(StatusCode::CREATED, &review))
}

// ---------------------------------------------------------------------------------------
// TokenRequest

async fn token_request(
    State(cluster): Shared,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller(&cluster, &headers)?;
    let request: TokenRequest = decode(body, "authentication.k8s.io/v1", "TokenRequest")?;
    if let Some(body_name) = request.metadata.name.as_deref().filter(|n| !n.is_empty())
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "metadata.name: Invalid value: {body_name:?}: must match the service account name if specified"
        )));
    }
    let minted = cluster.token_request(&ns, &name, &request.spec, SystemTime::now())?;
    Ok(json_response(StatusCode::CREATED, &minted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::json;
    use tower::ServiceExt as _;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

    fn cluster() -> Arc<Cluster> {
        let cluster = Cluster::new(
            ISSUER.into(),
            vec![ISSUER.into()],
            "https://127.0.0.1:1".into(),
        )
        .expect("cluster");
        Arc::new(cluster)
    }

    fn reviewer(cluster: &Cluster) -> String {
        let now = SystemTime::now();
        cluster.ensure_service_account("tokengate", "reviewer", now);
        let mut store = cluster.store();
        store.allow_reviewer("system:serviceaccount:tokengate:reviewer");
        store.set_watcher("system:serviceaccount:tokengate:reviewer", true);
        drop(store);
        let spec = Default::default();
        cluster
            .token_request("tokengate", "reviewer", &spec, now)
            .expect("token")
            .status
            .expect("status")
            .token
    }

    async fn call(
        cluster: &Arc<Cluster>,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::from(body.to_string())).expect("request");
        let response = router(Arc::clone(cluster))
            .oneshot(request)
            .await
            .expect("response");
        let code = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn review_body(token: &str, audiences: &[&str]) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {"token": token, "audiences": audiences}})
    }

    #[tokio::test]
    async fn token_review_answers_201_with_spec_echoed_and_status() {
        let c = cluster();
        let auth = reviewer(&c);
        let uri = "/apis/authentication.k8s.io/v1/tokenreviews";
        let (code, json) = call(&c, "POST", uri, Some(&auth), review_body(&auth, &[])).await;
        assert_eq!(code, StatusCode::CREATED);
        assert_eq!(json["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(json["kind"], "TokenReview");
        assert_eq!(json["spec"]["token"], auth.as_str());
        assert_eq!(json["status"]["authenticated"], true);
        assert_eq!(json["status"]["audiences"], json!([ISSUER]));
        assert!(json["status"].get("error").is_none());

        let (code, json) = call(&c, "POST", uri, Some(&auth), review_body("garbage", &[])).await;
        assert_eq!(code, StatusCode::CREATED);
        assert_eq!(
            json["status"],
            json!({"user": {}, "error": "invalid bearer token"})
        );
        assert_eq!(c.knobs.reviews(), 2);
    }

    #[tokio::test]
    async fn v1beta1_reviews_are_answered_in_v1beta1() {
        let c = cluster();
        let auth = reviewer(&c);
        let body = json!({"apiVersion": "authentication.k8s.io/v1beta1", "kind": "TokenReview",
                          "spec": {"token": auth}});
        let uri = "/apis/authentication.k8s.io/v1beta1/tokenreviews";
        let (code, json) = call(&c, "POST", uri, Some(&auth), body).await;
        assert_eq!(code, StatusCode::CREATED);
        assert_eq!(json["apiVersion"], "authentication.k8s.io/v1beta1");
        assert_eq!(json["status"]["authenticated"], true);
    }

    #[tokio::test]
    async fn callers_must_be_authenticated_and_allowed() {
        let c = cluster();
        let auth = reviewer(&c);
        let uri = "/apis/authentication.k8s.io/v1/tokenreviews";
        let (code, json) = call(&c, "POST", uri, None, review_body(&auth, &[])).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(json["reason"], "Unauthorized");
        let (code, _) = call(&c, "POST", uri, Some("nope"), review_body(&auth, &[])).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);

        let now = SystemTime::now();
        c.ensure_service_account("x", "y", now);
        let other = c
            .token_request("x", "y", &Default::default(), now)
            .expect("token")
            .status
            .expect("status")
            .token;
        let (code, json) = call(&c, "POST", uri, Some(&other), review_body(&auth, &[])).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(
            json["message"],
            "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:x:y\" \
             cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
        );
    }

    #[tokio::test]
    async fn empty_token_and_bad_bodies_are_400_status() {
        let c = cluster();
        let auth = reviewer(&c);
        let uri = "/apis/authentication.k8s.io/v1/tokenreviews";
        let (code, json) = call(&c, "POST", uri, Some(&auth), review_body("", &[])).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(json["reason"], "BadRequest");
        assert_eq!(
            json["message"],
            "token is required for TokenReview in authentication"
        );
        let (code, json) = call(&c, "POST", uri, Some(&auth), json!([1, 2])).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(json["kind"], "Status");
        let wrong = json!({"apiVersion": "v1", "kind": "TokenReview", "spec": {"token": "x"}});
        let (code, _) = call(&c, "POST", uri, Some(&auth), wrong).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn pods_and_service_accounts_round_trip() {
        let c = cluster();
        let auth = reviewer(&c);
        let (code, sa) = call(
            &c,
            "POST",
            "/api/v1/namespaces/ns/serviceaccounts",
            Some(&auth),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED);
        assert!(sa["metadata"]["uid"].is_string());
        let (code, pod) = call(&c, "POST", "/api/v1/namespaces/ns/pods", Some(&auth),
            json!({"metadata": {"name": "web"}, "spec": {"serviceAccountName": "app", "containers": []}})).await;
        assert_eq!(code, StatusCode::CREATED);
        assert_eq!(pod["spec"]["serviceAccountName"], "app");
        let (code, _) = call(&c, "POST", "/api/v1/namespaces/ns/pods", Some(&auth),
            json!({"metadata": {"name": "lost"}, "spec": {"serviceAccountName": "ghost", "containers": []}})).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        let (code, list) = call(
            &c,
            "GET",
            "/api/v1/namespaces/ns/pods",
            Some(&auth),
            Value::Null,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
        let (code, _) = call(
            &c,
            "DELETE",
            "/api/v1/namespaces/ns/pods/web",
            Some(&auth),
            Value::Null,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let (code, json) = call(
            &c,
            "GET",
            "/api/v1/namespaces/ns/pods/web",
            Some(&auth),
            Value::Null,
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(json["message"], "pods \"web\" not found");
    }

    #[tokio::test]
    async fn token_request_mints_a_bound_token() {
        let c = cluster();
        let auth = reviewer(&c);
        let now = SystemTime::now();
        c.ensure_service_account("ns", "app", now);
        let pod_uid = c.ensure_pod("ns", "web", "app", now);
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["vault"], "expirationSeconds": 600,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": pod_uid}}});
        let uri = "/api/v1/namespaces/ns/serviceaccounts/app/token";
        let (code, json) = call(&c, "POST", uri, Some(&auth), body).await;
        assert_eq!(code, StatusCode::CREATED, "{json}");
        assert_eq!(json["kind"], "TokenRequest");
        let token = json["status"]["token"].as_str().expect("token");
        assert!(json["status"]["expirationTimestamp"].is_string());
        let ok = c
            .authenticate(token, &["vault".into()], now)
            .expect("valid");
        assert_eq!(ok.audiences, vec!["vault".to_owned()]);

        let short = json!({"spec": {"expirationSeconds": 60}});
        let (code, json) = call(&c, "POST", uri, Some(&auth), short).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(json["reason"], "Invalid");
    }

    #[tokio::test]
    async fn discovery_points_at_the_jwks() {
        let c = cluster();
        let (code, doc) = call(
            &c,
            "GET",
            "/.well-known/openid-configuration",
            None,
            Value::Null,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(doc["issuer"], ISSUER);
        assert_eq!(doc["jwks_uri"], "https://127.0.0.1:1/openid/v1/jwks");
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        let (_, jwks) = call(&c, "GET", "/openid/v1/jwks", None, Value::Null).await;
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], c.keys.current_kid());
        assert_eq!(
            (key["kty"].as_str(), key["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
    }

    #[tokio::test]
    async fn knobs_inject_failures_and_count_reviews() {
        let c = cluster();
        let auth = reviewer(&c);
        let (code, _) = call(
            &c,
            "POST",
            "/sim/fail",
            None,
            json!({"count": 2, "kind": "503"}),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let uri = "/apis/authentication.k8s.io/v1/tokenreviews";
        for _ in 0..2 {
            let (code, json) = call(&c, "POST", uri, Some(&auth), review_body(&auth, &[])).await;
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(json["kind"], "Status");
        }
        let (code, _) = call(
            &c,
            "POST",
            "/sim/fail",
            None,
            json!({"count": 1, "kind": "bad-json"}),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let (code, json) = call(&c, "POST", uri, Some(&auth), review_body(&auth, &[])).await;
        assert_eq!(
            (code, json),
            (StatusCode::CREATED, Value::Null),
            "unparsable body"
        );
        let (code, _) = call(&c, "POST", uri, Some(&auth), review_body(&auth, &[])).await;
        assert_eq!(code, StatusCode::CREATED);
        let (_, stats) = call(&c, "GET", "/sim/stats", None, Value::Null).await;
        assert_eq!(stats, json!({"tokenreviews": 4}));
        let (code, json) = call(&c, "POST", "/sim/fail", None, json!({"kind": "boom"})).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(json["kind"], "Status");
    }

    #[tokio::test]
    async fn protobuf_bodies_get_415_and_discovery_lists_what_is_served() {
        let c = cluster();
        let auth = reviewer(&c);
        let request = Request::builder()
            .method("POST")
            .uri("/api/v1/namespaces/ns/serviceaccounts")
            .header(header::AUTHORIZATION, format!("Bearer {auth}"))
            .header(header::CONTENT_TYPE, "application/vnd.kubernetes.protobuf")
            .body(Body::from("k8s\0"))
            .expect("request");
        let response = router(Arc::clone(&c))
            .oneshot(request)
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (code, groups) = call(&c, "GET", "/apis", None, Value::Null).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(groups["groups"][0]["name"], "authentication.k8s.io");
        let (_, core) = call(&c, "GET", "/api/v1", None, Value::Null).await;
        let names: Vec<&str> = core["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "pods",
                "secrets",
                "serviceaccounts",
                "serviceaccounts/token"
            ]
        );
    }

    #[tokio::test]
    async fn unknown_paths_are_status_404() {
        let c = cluster();
        let (code, json) = call(&c, "GET", "/nope", None, Value::Null).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(
            json["message"],
            "the server could not find the requested resource"
        );
    }
}
