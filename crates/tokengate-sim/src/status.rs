//! Kubernetes `Status` failure bodies, the way the API server writes them.
//!
//! Responsible for: the one error type of the sim's HTTP surface ([`ApiError`]) and its
//! rendering as `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",…}`
//! with the API server's reasons and codes. Every handler failure goes through here, so
//! a bad request always gets a `Status` body, never a panic or a plain-text error.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

use super::store::StoreError;

/// A failed API request: HTTP status, `reason`, `message`, optional `details`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// The HTTP status (also the body's `code`).
    pub(crate) code: StatusCode,
    /// The API server's `reason` (`NotFound`, `Forbidden`, …).
    pub(crate) reason: &'static str,
    /// The human message, in the API server's words.
    pub(crate) message: String,
    /// `details`, when the API server gives them (boxed: they are large and rare).
    pub(crate) details: Option<Box<StatusDetails>>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 `BadRequest`.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 401 `Unauthorized`, as the API server answers any unauthenticated request.
    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 403 `Forbidden` for `user` lacking `verb` on a cluster-scoped `resource` of `group`.
    pub(crate) fn forbidden(user: &str, verb: &str, resource: &str, group: &str) -> ApiError {
        ApiError::forbidden_in(user, verb, resource, group, None)
    }

    /// 403 `Forbidden` for `user` lacking `verb` on `resource` of `group`, across the
    /// cluster (`namespace` `None`) or in a namespace.
    pub(crate) fn forbidden_in(
        user: &str,
        verb: &str,
        resource: &str,
        group: &str,
        namespace: Option<&str>,
    ) -> ApiError {
        let qualified = if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{group}")
        };
        let scope = match namespace {
            None => "at the cluster scope".to_owned(),
            Some(ns) => format!("in the namespace \"{ns}\""),
        };
        let mut err = ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{qualified} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" \
                 in API group \"{group}\" {scope}"
            ),
        );
        err.details = Some(Box::new(StatusDetails {
            group: Some(group.to_owned()),
            kind: Some(resource.to_owned()),
            ..StatusDetails::default()
        }));
        err
    }

    /// 409 `Conflict`.
    pub(crate) fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// 422 `Invalid`: `KIND.GROUP "NAME" is invalid: FIELD: DETAIL`.
    pub(crate) fn invalid(qualified_kind: &str, name: &str, field: &str, detail: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {field}: {detail}"),
        )
    }

    /// 410 `Expired`: a resourceVersion older than the API server still holds.
    pub(crate) fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, "Expired", message)
    }

    /// 504 `Timeout` for a resourceVersion the API server has not reached (it waits
    /// three seconds for it first; the sim, whose writes are synchronous, does not).
    pub(crate) fn too_large_resource_version(requested: u64, current: u64) -> ApiError {
        ApiError {
            details: Some(Box::new(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ResourceVersionTooLarge".to_owned()),
                    message: Some("Too large resource version".to_owned()),
                    field: None,
                }]),
                retry_after_seconds: Some(1),
                ..StatusDetails::default()
            })),
            ..ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            )
        }
    }

    /// 406 `NotAcceptable`: no media type of `Accept` can be served.
    pub(crate) fn not_acceptable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", message)
    }

    /// The `Status` object, as a body or inside a watch `ERROR` event.
    pub(crate) fn status(&self) -> Status {
        status(
            self.code,
            self.reason,
            &self.message,
            self.details.as_deref().cloned(),
        )
    }

    /// 503 `ServiceUnavailable` (the discovery knob).
    pub(crate) fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )
    }

    /// 404 for a path the sim does not serve.
    pub(crate) fn no_route() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 405 for a method the path does not support.
    pub(crate) fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        let message = err.to_string();
        match err {
            StoreError::NotFound { resource, name } => ApiError {
                details: Some(named_details(resource, name)),
                ..ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
            },
            StoreError::AlreadyExists { resource, name } => ApiError {
                details: Some(named_details(resource, name)),
                ..ApiError::new(StatusCode::CONFLICT, "AlreadyExists", message)
            },
            StoreError::NameRequired { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
            }
            StoreError::NamespaceMismatch => ApiError::bad_request(message),
        }
    }
}

fn named_details(resource: &str, name: String) -> Box<StatusDetails> {
    Box::new(StatusDetails {
        name: Some(name),
        kind: Some(resource.to_owned()),
        ..StatusDetails::default()
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        status_response(
            self.code,
            self.reason,
            &self.message,
            self.details.map(|d| *d),
        )
    }
}

/// A `Status` failure response with this code, reason and message.
pub(crate) fn status_response(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<StatusDetails>,
) -> Response {
    let body = serde_json::to_vec(&status(code, reason, message, details)).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn status(code: StatusCode, reason: &str, message: &str, details: Option<StatusDetails>) -> Status {
    Status {
        code: Some(i32::from(code.as_u16())),
        details,
        message: Some(message.to_owned()),
        reason: (!reason.is_empty()).then(|| reason.to_owned()),
        status: Some("Failure".to_owned()),
        ..Status::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(err: ApiError) -> (StatusCode, serde_json::Value) {
        let response = err.into_response();
        let code = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (code, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn unauthorized_is_the_api_server_status() {
        let (code, json) = body(ApiError::unauthorized()).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(
            json,
            serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
    }

    #[tokio::test]
    async fn forbidden_names_user_resource_and_group() {
        let err = ApiError::forbidden(
            "system:serviceaccount:x:y",
            "create",
            "tokenreviews",
            "authentication.k8s.io",
        );
        let (code, json) = body(err).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(
            json["message"],
            "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:x:y\" \
             cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
        );
        assert_eq!(json["details"]["kind"], "tokenreviews");
    }

    #[tokio::test]
    async fn not_found_carries_name_and_kind() {
        let err = ApiError::from(StoreError::NotFound {
            resource: "pods",
            name: "web".into(),
        });
        let (code, json) = body(err).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(json["reason"], "NotFound");
        assert_eq!(json["message"], "pods \"web\" not found");
        assert_eq!(
            json["details"],
            serde_json::json!({"name": "web", "kind": "pods"})
        );
    }
}
