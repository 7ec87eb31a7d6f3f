//! Pods and service accounts over HTTP: create, get, delete, as the API server serves
//! them under `/api/v1`.
//!
//! Responsible for: the handlers, caller authentication on each, and what the
//! ServiceAccount admission plugin adds to a new pod. Not for: storage rules (`store`),
//! lists and watches (`watch`).

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use serde::de::DeserializeOwned;

use super::api::{Shared, caller, decode, json_response};
use super::status::ApiError;
use super::store::Stored;

/// `POST /api/v1/namespaces/{ns}/{resource}`.
pub(crate) async fn create<T>(
    State(cluster): Shared,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError>
where
    T: Stored + DeserializeOwned + serde::Serialize,
{
    caller(&cluster, &headers)?;
    let obj: T = decode(body, T::API_VERSION, T::KIND)?;
    let created = cluster.store().create(&ns, obj, SystemTime::now())?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// Pod creation, with what the ServiceAccount admission plugin adds: the default
/// `serviceAccountName`, and a refusal when that account does not exist (the namespace's
/// `default` account is created on first use, as its controller would have).
pub(crate) async fn create_pod(
    State(cluster): Shared,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller(&cluster, &headers)?;
    let mut pod: Pod = decode(body, "v1", "Pod")?;
    let spec = pod.spec.get_or_insert_with(Default::default);
    let sa = spec
        .service_account_name
        .get_or_insert_with(|| "default".to_owned())
        .clone();
    let now = SystemTime::now();
    if sa == "default" {
        cluster.ensure_service_account(&ns, "default", now);
    }
    let mut store = cluster.store();
    if store.get::<ServiceAccount>(&ns, &sa).is_err() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        return Err(ApiError {
            code: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: format!(
                "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
            ),
            details: None,
        });
    }
    let created = store.create(&ns, pod, now)?;
    drop(store);
    Ok(json_response(StatusCode::CREATED, &created))
}

/// `GET /api/v1/namespaces/{ns}/{resource}/{name}`.
pub(crate) async fn get_one<T>(
    State(cluster): Shared,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError>
where
    T: Stored + serde::Serialize,
{
    caller(&cluster, &headers)?;
    let obj = cluster.store().get::<T>(&ns, &name)?.clone();
    Ok(json_response(StatusCode::OK, &obj))
}

/// `DELETE …/serviceaccounts/{name}`, with the account's legacy token Secrets.
pub(crate) async fn delete_service_account(
    State(cluster): Shared,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller(&cluster, &headers)?;
    let deleted = cluster.store().delete_service_account(&ns, &name)?;
    Ok(json_response(StatusCode::OK, &deleted))
}

/// `DELETE …/pods/{name}`: immediate, no grace period.
pub(crate) async fn delete_pod(
    State(cluster): Shared,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller(&cluster, &headers)?;
    let deleted = cluster.store().delete::<Pod>(&ns, &name)?;
    Ok(json_response(StatusCode::OK, &deleted))
}
