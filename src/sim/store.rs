//! The sim's object store: service accounts, pods, token Secrets, and the RBAC table of
//! callers allowed to create TokenReviews.
//!
//! Responsible for: creating objects the way the API server does (uid, resourceVersion,
//! creationTimestamp, `generateName`), looking them up, deleting them, and a cluster-wide
//! resourceVersion counter that every write bumps (so watches can be added later).
//!
//! Not responsible for: HTTP (see `api`), tokens (see `tokens`), locking. The store is a
//! plain value; the sim keeps it behind a `std::sync::Mutex` that is never held across an
//! `.await`. Time is passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{Metadata, Resource};
use rand::Rng as _;

/// A store failure, worded as the API server words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    /// No object of that resource and name in the namespace (HTTP 404, `NotFound`).
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// The plural resource, e.g. `pods`.
        resource: &'static str,
        /// The object's name.
        name: String,
    },
    /// An object of that name already exists (HTTP 409, `AlreadyExists`).
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// The plural resource, e.g. `pods`.
        resource: &'static str,
        /// The object's name.
        name: String,
    },
    /// The object has neither `name` nor `generateName` (HTTP 422, `Invalid`).
    #[error(
        "{kind} \"\" is invalid: metadata.name: Required value: name or generateName is required"
    )]
    NameRequired {
        /// The kind, e.g. `Pod`.
        kind: &'static str,
    },
    /// The body's namespace differs from the URL's (HTTP 400, `BadRequest`).
    #[error(
        "the namespace of the provided object does not match the namespace sent on the request"
    )]
    NamespaceMismatch,
}

/// Objects of one kind, by (namespace, name).
pub(crate) struct Table<T> {
    objects: BTreeMap<(String, String), T>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            objects: BTreeMap::new(),
        }
    }
}

/// A kind the store holds.
pub(crate) trait Stored: Metadata<Ty = ObjectMeta> + Resource + Clone {
    /// The table of this kind in `store`.
    fn table(store: &Store) -> &Table<Self>;
    /// The table of this kind in `store`, for writing.
    fn table_mut(store: &mut Store) -> &mut Table<Self>;
}

macro_rules! stored {
    ($ty:ty, $field:ident) => {
        impl Stored for $ty {
            fn table(store: &Store) -> &Table<Self> {
                &store.$field
            }
            fn table_mut(store: &mut Store) -> &mut Table<Self> {
                &mut store.$field
            }
        }
    };
}

stored!(ServiceAccount, service_accounts);
stored!(Pod, pods);
stored!(Secret, secrets);

/// The whole in-memory cluster state the sim needs.
#[derive(Default)]
pub(crate) struct Store {
    /// The last resourceVersion handed out; every write takes the next one.
    resource_version: u64,
    service_accounts: Table<ServiceAccount>,
    pods: Table<Pod>,
    secrets: Table<Secret>,
    /// Usernames allowed to create tokenreviews (holders of `system:auth-delegator`).
    reviewers: BTreeSet<String>,
}

/// The characters the API server's `generateName` suffix is drawn from.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A 5-character random suffix, as the API server appends for `generateName`.
pub(crate) fn random_suffix() -> String {
    let mut rng = rand::rng();
    (0..5)
        .map(|_| char::from(NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())]))
        .collect()
}

fn timestamp(now: SystemTime) -> Time {
    let ts = k8s_openapi::jiff::Timestamp::try_from(now)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    // The API server stores whole seconds.
    Time(k8s_openapi::jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

impl Store {
    /// The current resourceVersion of the cluster (the last write's).
    pub(crate) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    fn next_resource_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Creates `obj` in `namespace`, assigning uid, resourceVersion and creationTimestamp.
    pub(crate) fn create<T: Stored>(
        &mut self,
        namespace: &str,
        mut obj: T,
        now: SystemTime,
    ) -> Result<T, StoreError> {
        let meta = obj.metadata_mut();
        match meta.namespace.as_deref() {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(StoreError::NamespaceMismatch);
            }
            _ => meta.namespace = Some(namespace.to_owned()),
        }
        let name = match (meta.name.as_deref(), meta.generate_name.as_deref()) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => return Err(StoreError::NameRequired { kind: T::KIND }),
        };
        let key = (namespace.to_owned(), name.clone());
        if T::table(self).objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists {
                resource: T::URL_PATH_SEGMENT,
                name,
            });
        }
        let resource_version = self.next_resource_version();
        let meta = obj.metadata_mut();
        meta.name = Some(name);
        meta.uid = Some(uuid::Uuid::new_v4().to_string());
        meta.resource_version = Some(resource_version);
        meta.creation_timestamp = Some(timestamp(now));
        meta.deletion_timestamp = None;
        T::table_mut(self).objects.insert(key, obj.clone());
        Ok(obj)
    }

    /// The object `namespace/name`.
    pub(crate) fn get<T: Stored>(&self, namespace: &str, name: &str) -> Result<&T, StoreError> {
        T::table(self)
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| StoreError::NotFound {
                resource: T::URL_PATH_SEGMENT,
                name: name.to_owned(),
            })
    }

    /// The uid of `namespace/name`, if it exists.
    pub(crate) fn uid_of<T: Stored>(&self, namespace: &str, name: &str) -> Option<String> {
        self.get::<T>(namespace, name)
            .ok()
            .and_then(|o| o.metadata().uid.clone())
    }

    /// All objects of a kind in `namespace` (every namespace when `None`), by name.
    pub(crate) fn list<T: Stored>(&self, namespace: Option<&str>) -> Vec<T> {
        T::table(self)
            .objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, obj)| obj.clone())
            .collect()
    }

    /// Deletes `namespace/name` at once (no graceful period) and returns it.
    pub(crate) fn delete<T: Stored>(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<T, StoreError> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut obj =
            T::table_mut(self)
                .objects
                .remove(&key)
                .ok_or_else(|| StoreError::NotFound {
                    resource: T::URL_PATH_SEGMENT,
                    name: name.to_owned(),
                })?;
        let resource_version = self.next_resource_version();
        obj.metadata_mut().resource_version = Some(resource_version);
        Ok(obj)
    }

    /// Deletes a service account and, like the API server's token controller, the
    /// legacy token Secrets that belong to it.
    pub(crate) fn delete_service_account(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccount, StoreError> {
        let sa = self.delete::<ServiceAccount>(namespace, name)?;
        let owned: Vec<String> = self
            .list::<Secret>(Some(namespace))
            .into_iter()
            .filter(|s| {
                s.type_.as_deref() == Some(SERVICE_ACCOUNT_TOKEN_TYPE)
                    && s.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(SA_NAME_ANNOTATION))
                        .is_some_and(|n| n == name)
            })
            .filter_map(|s| s.metadata.name)
            .collect();
        for secret in owned {
            // Just listed under the same borrow of the store: it exists.
            let _ = self.delete::<Secret>(namespace, &secret);
        }
        Ok(sa)
    }

    /// Adds `username` to the callers allowed to create tokenreviews.
    pub(crate) fn allow_reviewer(&mut self, username: &str) {
        self.reviewers.insert(username.to_owned());
    }

    /// Whether `username` may create tokenreviews.
    pub(crate) fn may_review(&self, username: &str) -> bool {
        self.reviewers.contains(username)
    }
}

/// The Secret type of legacy service-account tokens.
pub(crate) const SERVICE_ACCOUNT_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming the service account a token Secret belongs to.
pub(crate) const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The annotation carrying that service account's uid.
pub(crate) const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

#[cfg(test)]
mod tests {
    use super::*;

    fn named<T: Stored + Default>(name: &str) -> T {
        let mut obj = T::default();
        obj.metadata_mut().name = Some(name.to_owned());
        obj
    }

    #[test]
    fn create_assigns_uid_resource_version_and_timestamp() {
        let mut store = Store::default();
        let sa = store
            .create("ns", named::<ServiceAccount>("a"), SystemTime::now())
            .expect("create");
        assert_eq!(sa.metadata.namespace.as_deref(), Some("ns"));
        assert!(sa.metadata.uid.is_some());
        assert_eq!(sa.metadata.resource_version.as_deref(), Some("1"));
        assert!(sa.metadata.creation_timestamp.is_some());
        assert_eq!(store.resource_version(), 1);
    }

    #[test]
    fn recreating_after_delete_gives_a_new_uid() {
        let mut store = Store::default();
        let now = SystemTime::now();
        let first = store
            .create("ns", named::<ServiceAccount>("a"), now)
            .expect("create");
        assert_eq!(
            store.create("ns", named::<ServiceAccount>("a"), now),
            Err(StoreError::AlreadyExists {
                resource: "serviceaccounts",
                name: "a".into()
            })
        );
        store.delete::<ServiceAccount>("ns", "a").expect("delete");
        let second = store
            .create("ns", named::<ServiceAccount>("a"), now)
            .expect("create");
        assert_ne!(first.metadata.uid, second.metadata.uid);
        assert_eq!(store.resource_version(), 3);
    }

    #[test]
    fn errors_use_the_api_server_wording() {
        let store = Store::default();
        let err = store.get::<Pod>("ns", "p").expect_err("missing");
        assert_eq!(err.to_string(), r#"pods "p" not found"#);
        let mut store = Store::default();
        let err = store
            .create("ns", Pod::default(), SystemTime::now())
            .expect_err("no name");
        assert_eq!(
            err.to_string(),
            r#"Pod "" is invalid: metadata.name: Required value: name or generateName is required"#
        );
    }

    #[test]
    fn generate_name_appends_a_suffix_and_namespace_must_match() {
        let mut store = Store::default();
        let mut pod = Pod::default();
        pod.metadata.generate_name = Some("web-".into());
        let pod = store.create("ns", pod, SystemTime::now()).expect("create");
        let name = pod.metadata.name.expect("name");
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        let mut other = named::<Pod>("p");
        other.metadata.namespace = Some("elsewhere".into());
        assert_eq!(
            store.create("ns", other, SystemTime::now()),
            Err(StoreError::NamespaceMismatch)
        );
    }

    #[test]
    fn deleting_a_service_account_deletes_its_token_secrets() {
        let mut store = Store::default();
        let now = SystemTime::now();
        store
            .create("ns", named::<ServiceAccount>("a"), now)
            .expect("sa");
        let mut secret = named::<Secret>("a-token-x");
        secret.type_ = Some(SERVICE_ACCOUNT_TOKEN_TYPE.into());
        secret.metadata.annotations =
            Some([(SA_NAME_ANNOTATION.to_owned(), "a".to_owned())].into());
        store.create("ns", secret, now).expect("secret");
        store
            .create("ns", named::<Secret>("unrelated"), now)
            .expect("secret");
        store.delete_service_account("ns", "a").expect("delete");
        let left: Vec<_> = store
            .list::<Secret>(Some("ns"))
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        assert_eq!(left, vec!["unrelated".to_owned()]);
    }

    #[test]
    fn only_listed_users_may_review() {
        let mut store = Store::default();
        assert!(!store.may_review("system:serviceaccount:a:b"));
        store.allow_reviewer("system:serviceaccount:a:b");
        assert!(store.may_review("system:serviceaccount:a:b"));
    }
}
