//! The state a running sim shares between its handle ([`Sim`](super::Sim)) and its HTTP
//! handlers, and the operations both use: TokenRequest, legacy tokens, object creation,
//! authenticating a bearer token.
//!
//! Responsible for: applying the TokenRequest API's rules (service-account lookup,
//! audience defaulting, expiration bounds, pod binding) and keeping the store lock short:
//! it is a `std::sync::Mutex`, taken only in synchronous code and never across an
//! `.await`; signatures are made and checked outside it.
//!
//! Not responsible for: HTTP shapes (see `api`), the authenticator's rules (see `review`).

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenRequestStatus};
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::SimError;
use super::keys::Keyring;
use super::knobs::Knobs;
use super::review::{Authenticated, Authority};
use super::status::ApiError;
use super::store::{self, Store, StoreError};
use super::tokens::{self, Projected, Ref};

/// Everything a running sim knows.
pub(crate) struct Cluster {
    /// `--service-account-issuer`.
    pub(crate) issuer: String,
    /// `--api-audiences`.
    pub(crate) api_audiences: Vec<String>,
    /// The sim's base URL (`https://127.0.0.1:PORT`).
    pub(crate) url: String,
    /// The service-account signing keys.
    pub(crate) keys: Keyring,
    /// Test knobs.
    pub(crate) knobs: Knobs,
    store: Mutex<Store>,
}

/// `KIND.GROUP` of TokenRequest, as validation messages name it.
const TOKEN_REQUEST_KIND: &str = "TokenRequest.authentication.k8s.io";

impl Cluster {
    /// A cluster with fresh keys and an empty store.
    pub(crate) fn new(
        issuer: String,
        api_audiences: Vec<String>,
        url: String,
    ) -> Result<Cluster, SimError> {
        Ok(Cluster {
            issuer,
            api_audiences,
            url,
            keys: Keyring::generate()?,
            knobs: Knobs::default(),
            store: Mutex::new(Store::default()),
        })
    }

    /// The store, locked. Callers hold the guard in synchronous code only.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the maps half-written in a way that
        // matters to a test double; keep serving.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn authority(&self) -> Authority<'_> {
        Authority {
            issuer: &self.issuer,
            api_audiences: &self.api_audiences,
            keys: &self.keys,
        }
    }

    /// Authenticates `raw` for `requested` (empty = the API audiences) at `now`, as the
    /// API server's service-account authenticator does; `Err` is `status.error`.
    pub(crate) fn authenticate(
        &self,
        raw: &str,
        requested: &[String],
        now: SystemTime,
    ) -> Result<Authenticated, String> {
        let verified = self.authority().verify(raw, requested)?;
        let store = self.store();
        verified.validate(&store, unix_seconds(now))
    }

    /// The TokenRequest subresource: `POST …/serviceaccounts/{name}/token`.
    pub(crate) fn token_request(
        &self,
        namespace: &str,
        name: &str,
        spec: &TokenRequestSpec,
        now: SystemTime,
    ) -> Result<TokenRequest, ApiError> {
        let mut spec = spec.clone();
        let (sa_uid, pod) = {
            let store = self.store();
            let sa = store.get::<ServiceAccount>(namespace, name)?;
            let sa_uid = sa.metadata.uid.clone().unwrap_or_default();
            if spec.audiences.is_empty() {
                spec.audiences = self.api_audiences.clone();
            }
            let seconds = *spec
                .expiration_seconds
                .get_or_insert(tokens::DEFAULT_EXPIRATION_SECONDS);
            tokens::validate_expiration(seconds).map_err(|detail| {
                ApiError::invalid(TOKEN_REQUEST_KIND, "", "spec.expirationSeconds", &detail)
            })?;
            let pod = match &spec.bound_object_ref {
                None => None,
                Some(bound) => Some(bound_pod(&store, namespace, name, bound)?),
            };
            (sa_uid, pod)
        };
        let seconds = spec
            .expiration_seconds
            .unwrap_or(tokens::DEFAULT_EXPIRATION_SECONDS);
        let issued_at = unix_seconds(now);
        let expires_at = issued_at.saturating_add(seconds);
        let claims = Projected {
            issuer: self.issuer.clone(),
            namespace: namespace.to_owned(),
            service_account: Ref {
                name: name.to_owned(),
                uid: sa_uid,
            },
            pod,
            audiences: spec.audiences.clone(),
            issued_at,
            expires_at,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = self.keys.sign(&claims.claims());
        Ok(TokenRequest {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                creation_timestamp: Some(time(issued_at)),
                ..ObjectMeta::default()
            },
            spec,
            status: Some(TokenRequestStatus {
                expiration_timestamp: time(expires_at),
                token,
            }),
        })
    }

    /// Creates service account `namespace/name` unless it exists; returns its uid.
    pub(crate) fn ensure_service_account(
        &self,
        namespace: &str,
        name: &str,
        now: SystemTime,
    ) -> String {
        let mut store = self.store();
        if let Some(uid) = store.uid_of::<ServiceAccount>(namespace, name) {
            return uid;
        }
        let sa = ServiceAccount {
            metadata: named(name),
            ..ServiceAccount::default()
        };
        created_uid(store.create(namespace, sa, now))
    }

    /// Creates pod `namespace/name` running as `service_account` unless it exists;
    /// returns its uid.
    pub(crate) fn ensure_pod(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        now: SystemTime,
    ) -> String {
        let mut store = self.store();
        if let Some(uid) = store.uid_of::<Pod>(namespace, name) {
            return uid;
        }
        let pod = Pod {
            metadata: named(name),
            spec: Some(PodSpec {
                service_account_name: Some(service_account.to_owned()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        created_uid(store.create(namespace, pod, now))
    }

    /// Creates a `kubernetes.io/service-account-token` Secret for `service_account`
    /// (creating the account if needed, as a legacy cluster would have it) and returns
    /// the legacy token stored in it.
    pub(crate) fn legacy_token(
        &self,
        namespace: &str,
        service_account: &str,
        ca_pem: &str,
        now: SystemTime,
    ) -> String {
        let sa_uid = self.ensure_service_account(namespace, service_account, now);
        let secret_name = format!("{service_account}-token-{}", store::random_suffix());
        let sa = Ref {
            name: service_account.to_owned(),
            uid: sa_uid.clone(),
        };
        let token = self
            .keys
            .sign(&tokens::legacy_claims(namespace, &sa, &secret_name));
        let mut metadata = named(&secret_name);
        metadata.annotations = Some(
            [
                (
                    store::SA_NAME_ANNOTATION.to_owned(),
                    service_account.to_owned(),
                ),
                (store::SA_UID_ANNOTATION.to_owned(), sa_uid),
            ]
            .into(),
        );
        let secret = Secret {
            metadata,
            type_: Some(store::SERVICE_ACCOUNT_TOKEN_TYPE.to_owned()),
            data: Some(
                [
                    ("ca.crt".to_owned(), ByteString(ca_pem.as_bytes().to_vec())),
                    (
                        "namespace".to_owned(),
                        ByteString(namespace.as_bytes().to_vec()),
                    ),
                    ("token".to_owned(), ByteString(token.clone().into_bytes())),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        // The name carries a fresh random suffix; a clash would only cost this token.
        let _ = self.store().create(namespace, secret, now);
        token
    }
}

/// The pod a TokenRequest binds to, checked as the API server checks it.
fn bound_pod(
    store: &Store,
    namespace: &str,
    service_account: &str,
    bound: &k8s_openapi::api::authentication::v1::BoundObjectReference,
) -> Result<Ref, ApiError> {
    let api_version = bound.api_version.as_deref().unwrap_or_default();
    let kind = bound.kind.as_deref().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if !group.is_empty() || kind != "Pod" {
        // schema.GroupVersionKind.String()
        return Err(ApiError::bad_request(format!(
            "cannot bind token to object of type {group}/{version}, Kind={kind}"
        )));
    }
    let name = bound.name.as_deref().unwrap_or_default();
    let pod = store.get::<Pod>(namespace, name)?;
    let runs_as = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    if runs_as != service_account {
        return Err(ApiError::bad_request(format!(
            "cannot bind token for serviceaccount {service_account:?} to pod running with different serviceaccount name."
        )));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(want) = bound.uid.as_deref().filter(|u| !u.is_empty())
        && want != uid
    {
        return Err(ApiError::conflict(format!(
            "Operation cannot be fulfilled on Pod {name:?}: the UID in the bound object reference ({want}) \
             does not match the UID in record. The object might have been deleted and then recreated"
        )));
    }
    Ok(Ref {
        name: name.to_owned(),
        uid,
    })
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

fn created_uid<T: store::Stored>(created: Result<T, StoreError>) -> String {
    // Only reachable with a name that exists, which the callers checked under the lock.
    created
        .ok()
        .and_then(|o| o.metadata().uid.clone())
        .unwrap_or_default()
}

/// Whole seconds since the Unix epoch (negative before it), as tokens carry time.
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn time(seconds: i64) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(seconds)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::BoundObjectReference;

    fn cluster() -> Cluster {
        Cluster::new(
            "https://issuer".into(),
            vec!["https://issuer".into()],
            "https://127.0.0.1:1".into(),
        )
        .expect("cluster")
    }

    fn bound(name: &str, uid: Option<&str>) -> Option<BoundObjectReference> {
        Some(BoundObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.into()),
            uid: uid.map(str::to_owned),
        })
    }

    #[test]
    fn token_request_defaults_audiences_and_lifetime() {
        let c = cluster();
        let now = SystemTime::now();
        c.ensure_service_account("ns", "app", now);
        let tr = c
            .token_request("ns", "app", &TokenRequestSpec::default(), now)
            .expect("token");
        assert_eq!(tr.spec.audiences, vec!["https://issuer".to_owned()]);
        assert_eq!(tr.spec.expiration_seconds, Some(3600));
        let status = tr.status.expect("status");
        assert_eq!(
            status.expiration_timestamp.0.as_second(),
            unix_seconds(now) + 3600
        );
        let ok = c.authenticate(&status.token, &[], now).expect("valid");
        assert_eq!(ok.username(), "system:serviceaccount:ns:app");
    }

    #[test]
    fn token_request_refuses_what_the_api_server_refuses() {
        let c = cluster();
        let now = SystemTime::now();
        let spec = TokenRequestSpec::default();
        let err = c.token_request("ns", "app", &spec, now).expect_err("no sa");
        assert_eq!(err.message, r#"serviceaccounts "app" not found"#);
        c.ensure_service_account("ns", "app", now);
        let short = TokenRequestSpec {
            expiration_seconds: Some(599),
            ..TokenRequestSpec::default()
        };
        let err = c
            .token_request("ns", "app", &short, now)
            .expect_err("short");
        assert_eq!(err.code.as_u16(), 422);
        assert_eq!(
            err.message,
            "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: \
             Invalid value: 599: may not specify a duration less than 10 minutes"
        );
        let to_missing_pod = TokenRequestSpec {
            bound_object_ref: bound("web", None),
            ..TokenRequestSpec::default()
        };
        let err = c
            .token_request("ns", "app", &to_missing_pod, now)
            .expect_err("pod");
        assert_eq!(err.message, r#"pods "web" not found"#);
        c.ensure_pod("ns", "web", "other", now);
        let err = c
            .token_request("ns", "app", &to_missing_pod, now)
            .expect_err("other sa");
        assert_eq!(err.code.as_u16(), 400);
    }

    #[test]
    fn bound_uid_must_match_the_pod() {
        let c = cluster();
        let now = SystemTime::now();
        c.ensure_service_account("ns", "app", now);
        let uid = c.ensure_pod("ns", "web", "app", now);
        let spec = TokenRequestSpec {
            bound_object_ref: bound("web", Some("stale")),
            ..TokenRequestSpec::default()
        };
        let err = c.token_request("ns", "app", &spec, now).expect_err("stale");
        assert_eq!(err.code.as_u16(), 409);
        let spec = TokenRequestSpec {
            bound_object_ref: bound("web", Some(&uid)),
            ..TokenRequestSpec::default()
        };
        let token = c.token_request("ns", "app", &spec, now).expect("token");
        let ok = c
            .authenticate(&token.status.expect("status").token, &[], now)
            .expect("valid");
        assert_eq!(
            ok.user.extra.expect("extra")[super::super::review::EXTRA_POD_UID],
            vec![uid]
        );
    }

    #[test]
    fn legacy_tokens_die_with_their_service_account() {
        let c = cluster();
        let now = SystemTime::now();
        let raw = c.legacy_token("ns", "old", "", now);
        assert!(c.authenticate(&raw, &[], now).is_ok());
        c.store()
            .delete_service_account("ns", "old")
            .expect("delete");
        assert_eq!(
            c.authenticate(&raw, &[], now),
            Err("Token has been invalidated".into())
        );
    }
}
