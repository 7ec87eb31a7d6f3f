//! The sim's object store: service accounts, pods, token Secrets, and the RBAC table of
//! callers allowed to create TokenReviews and to list and watch those objects.
//!
//! Responsible for: creating objects the way the API server does (uid, resourceVersion,
//! creationTimestamp, `generateName`), looking them up, deleting them, a cluster-wide
//! resourceVersion counter that every write bumps, and recording every write in the
//! change log that watches replay and follow (see `events`).
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

use super::events::{Change, Event, EventLog};

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
pub(crate) trait Stored:
    Metadata<Ty = ObjectMeta> + Resource + Clone + serde::Serialize
{
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
    /// Usernames allowed to list and watch pods, serviceaccounts and secrets, cluster
    /// wide (the gate's revocation ClusterRole). Nobody else may list or watch.
    watchers: BTreeSet<String>,
    /// Every write, for watches.
    events: EventLog,
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
        self.record(Change::Added, &obj);
        Ok(obj)
    }

    /// Records a write of `obj` (already at its new resourceVersion) in the change log.
    fn record<T: Stored>(&mut self, change: Change, obj: &T) {
        let meta = obj.metadata();
        let event = Event {
            resource_version: self.resource_version,
            change,
            resource: T::URL_PATH_SEGMENT,
            namespace: meta.namespace.clone().unwrap_or_default(),
            // k8s-openapi types always serialize; `apiVersion` and `kind` included.
            object: serde_json::to_value(obj).unwrap_or_default(),
        };
        self.events.record(event);
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
        self.record(Change::Deleted, &obj);
        Ok(obj)
    }

    /// Begins a graceful deletion of `namespace/name`, as `DELETE` with a grace period
    /// does: sets `deletionTimestamp` and `deletionGracePeriodSeconds` (a `MODIFIED`
    /// change) and leaves the object in place until [`Store::delete`]. `Ok(false)` if
    /// its deletion had already begun.
    pub(crate) fn begin_deletion<T: Stored>(
        &mut self,
        namespace: &str,
        name: &str,
        grace_seconds: i64,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(obj) = T::table(self).objects.get(&key) else {
            return Err(StoreError::NotFound {
                resource: T::URL_PATH_SEGMENT,
                name: name.to_owned(),
            });
        };
        if obj.metadata().deletion_timestamp.is_some() {
            return Ok(false);
        }
        let mut obj = obj.clone();
        let resource_version = self.next_resource_version();
        let meta = obj.metadata_mut();
        meta.resource_version = Some(resource_version);
        meta.deletion_timestamp = Some(timestamp(now));
        meta.deletion_grace_period_seconds = Some(grace_seconds);
        T::table_mut(self).objects.insert(key, obj.clone());
        self.record(Change::Modified, &obj);
        Ok(true)
    }

    /// The change log.
    pub(crate) fn events(&self) -> &EventLog {
        &self.events
    }

    /// Forgets the change log up to the current resourceVersion and ends every open
    /// watch with `410 Gone`, so that clients must re-list.
    pub(crate) fn expire_watches(&mut self) {
        self.events.expire(self.resource_version);
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

    /// Lets `username` list and watch pods, serviceaccounts and secrets (`true`), or
    /// takes that away (`false`).
    pub(crate) fn set_watcher(&mut self, username: &str, allowed: bool) {
        if allowed {
            self.watchers.insert(username.to_owned());
        } else {
            self.watchers.remove(username);
        }
    }

    /// Whether `username` may list and watch pods, serviceaccounts and secrets.
    pub(crate) fn may_watch(&self, username: &str) -> bool {
        self.watchers.contains(username)
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

    /// A store holding service account `ns/a` and its legacy token Secret `a-token-x`.
    fn account_with_token_secret(now: SystemTime) -> Store {
        let mut store = Store::default();
        store
            .create("ns", named::<ServiceAccount>("a"), now)
            .expect("sa");
        let mut secret = named::<Secret>("a-token-x");
        secret.type_ = Some(SERVICE_ACCOUNT_TOKEN_TYPE.into());
        secret.metadata.annotations =
            Some([(SA_NAME_ANNOTATION.to_owned(), "a".to_owned())].into());
        store.create("ns", secret, now).expect("secret");
        store
    }

    #[test]
    fn deleting_a_service_account_deletes_its_token_secrets() {
        let now = SystemTime::now();
        let mut store = account_with_token_secret(now);
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
    fn every_write_is_logged_in_order_with_the_deleted_state() {
        let now = SystemTime::now();
        let mut store = account_with_token_secret(now);
        let pod = store.create("ns", named::<Pod>("p"), now).expect("pod");
        assert_eq!(store.begin_deletion::<Pod>("ns", "p", 30, now), Ok(true));
        assert_eq!(store.begin_deletion::<Pod>("ns", "p", 30, now), Ok(false));
        store.delete::<Pod>("ns", "p").expect("delete");
        store.delete_service_account("ns", "a").expect("delete");
        let log: Vec<_> = store
            .events()
            .since(0)
            .expect("all kept")
            .iter()
            .map(|e| (e.resource_version, e.change, e.resource))
            .collect();
        assert_eq!(
            log,
            [
                (1, Change::Added, "serviceaccounts"),
                (2, Change::Added, "secrets"),
                (3, Change::Added, "pods"),
                (4, Change::Modified, "pods"),
                (5, Change::Deleted, "pods"),
                (6, Change::Deleted, "serviceaccounts"),
                (7, Change::Deleted, "secrets"),
            ]
        );
        let deleted = &store.events().since(4).expect("kept")[0];
        assert_eq!(
            deleted.object["metadata"]["uid"],
            pod.metadata.uid.expect("uid")
        );
        assert_eq!(deleted.object["metadata"]["resourceVersion"], "5");
        assert!(deleted.object["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(deleted.object["kind"], "Pod");
        store.expire_watches();
        assert_eq!(store.events().floor(), 7);
    }

    #[test]
    fn only_listed_users_may_watch() {
        let mut store = Store::default();
        assert!(!store.may_watch("u"));
        store.set_watcher("u", true);
        assert!(store.may_watch("u") && !store.may_review("u"));
        store.set_watcher("u", false);
        assert!(!store.may_watch("u"));
    }

    #[test]
    fn only_listed_users_may_review() {
        let mut store = Store::default();
        assert!(!store.may_review("system:serviceaccount:a:b"));
        store.allow_reviewer("system:serviceaccount:a:b");
        assert!(store.may_review("system:serviceaccount:a:b"));
    }
}
