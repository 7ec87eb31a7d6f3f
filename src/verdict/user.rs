//! A verdict's user, kept compactly.
//!
//! Responsible for: holding what the API server said about whose a token is (username,
//! UID, groups, extras) in the little memory a cache of a million verdicts can afford.
//! The parts every token of one service account shares (username, UID, groups) are
//! interned: verdicts of one account point at one copy. The per-token extras (pod name
//! and UID, credential ID, node) live in one allocation, the API server's well-known
//! keys as one byte each. And writing the user back out as a Kubernetes `UserInfo`
//! without building one.
//!
//! Not responsible for: deciding anything about the user.
//!
//! Interning is by value and bounded: an identity that falls out of the intern table is
//! not shared with later verdicts, nothing more. Identities are not secrets.

use std::hash::Hash;
use std::sync::{Arc, LazyLock};

use k8s_openapi::api::authentication::v1::UserInfo;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// Identities kept for sharing; a cluster's service accounts rarely number more.
const IDENTITIES_KEPT: u64 = 65_536;
/// Audience lists kept for sharing (each names a backend).
const AUDIENCES_KEPT: u64 = 1_024;

/// The parts of a user that every token of one service account shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Identity {
    username: Box<str>,
    uid: Box<str>,
    groups: Box<[Box<str>]>,
    /// Whether none of the above needs a JSON escape (nearly always): then an answer
    /// copies them without looking at each byte again.
    plain: bool,
}

type Interned<T> = LazyLock<moka::sync::Cache<Arc<T>, Arc<T>>>;

static IDENTITIES: Interned<Identity> = LazyLock::new(|| moka::sync::Cache::new(IDENTITIES_KEPT));
static AUDIENCES: Interned<[String]> = LazyLock::new(|| moka::sync::Cache::new(AUDIENCES_KEPT));

/// The shared copy of `value`, made from it when there is none.
fn intern<T: ?Sized + Eq + Hash + Send + Sync + 'static>(
    table: &Interned<T>,
    value: &T,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    if let Some(shared) = table.get(value) {
        return shared;
    }
    let shared = make();
    table.insert(Arc::clone(&shared), Arc::clone(&shared));
    shared
}

/// The shared copy of an audience list.
pub fn audiences(list: Vec<String>) -> Arc<[String]> {
    intern(&AUDIENCES, &list[..], || Arc::from(list.clone()))
}

/// Whose token it is: a Kubernetes `UserInfo`, compactly. Empty fields are absent, as
/// the API server (Go's `omitempty`) never sends them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct User {
    identity: Arc<Identity>,
    extra: Extra,
}

impl User {
    /// The username.
    pub(crate) fn username(&self) -> &str {
        &self.identity.username
    }

    /// The UID (empty when the API server gave none).
    pub(crate) fn uid(&self) -> &str {
        &self.identity.uid
    }

    /// The groups.
    pub(crate) fn groups(&self) -> impl ExactSizeIterator<Item = &str> {
        self.identity.groups.iter().map(|g| &**g)
    }

    /// Whether the username, UID and groups need no JSON escape.
    pub(crate) fn identity_is_plain_json(&self) -> bool {
        self.identity.plain
    }

    /// The extras.
    pub(crate) fn extra(&self) -> &Extra {
        &self.extra
    }

    /// The same user as the Kubernetes type (for requests that carry a user).
    pub(crate) fn to_user_info(&self) -> UserInfo {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        UserInfo {
            username: some(self.username()),
            uid: some(self.uid()),
            groups: (self.groups().len() > 0).then(|| self.groups().map(str::to_owned).collect()),
            extra: (!self.extra.is_empty()).then(|| {
                self.extra
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.map(str::to_owned).collect()))
                    .collect()
            }),
        }
    }
}

impl From<UserInfo> for User {
    fn from(user: UserInfo) -> User {
        let username: Box<str> = user.username.unwrap_or_default().into();
        let uid: Box<str> = user.uid.unwrap_or_default().into();
        let groups: Box<[Box<str>]> = user
            .groups
            .unwrap_or_default()
            .into_iter()
            .map(String::into_boxed_str)
            .collect();
        let plain = [&username, &uid]
            .into_iter()
            .chain(&groups)
            .all(|s| !super::needs_escape(s.as_bytes()));
        let identity = Identity {
            username,
            uid,
            groups,
            plain,
        };
        let extra = user.extra.unwrap_or_default();
        User {
            identity: intern(&IDENTITIES, &identity, || Arc::new(identity.clone())),
            extra: Extra::encode(extra.iter().map(|(k, v)| (k.as_str(), v.as_slice()))),
        }
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username())
            .field("uid", &self.uid())
            .field("groups", &self.identity.groups)
            .field("extra", &self.extra)
            .finish()
    }
}

/// Written exactly as k8s-openapi writes a `UserInfo` (fields in its order, absent when
/// empty), without building one.
impl Serialize for User {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if !self.extra.is_empty() {
            map.serialize_entry("extra", &self.extra)?;
        }
        if !self.identity.groups.is_empty() {
            map.serialize_entry("groups", &self.identity.groups)?;
        }
        if !self.uid().is_empty() {
            map.serialize_entry("uid", self.uid())?;
        }
        if !self.username().is_empty() {
            map.serialize_entry("username", self.username())?;
        }
        map.end()
    }
}

/// The extra keys the API server sets on service-account tokens (and the one tokengate
/// sets offline), each stored as its index in one byte.
pub(crate) const KNOWN_KEYS: [&str; 6] = [
    "authentication.kubernetes.io/credential-id",
    "authentication.kubernetes.io/node-name",
    "authentication.kubernetes.io/node-uid",
    "authentication.kubernetes.io/pod-name",
    "authentication.kubernetes.io/pod-uid",
    super::OFFLINE_EXTRA,
];
/// Marks a key stored in full.
const INLINE_KEY: u8 = u8::MAX;

/// A user's extras in one allocation: per key, its byte (an index into the well-known
/// keys, or [`INLINE_KEY`] and the key as a string), the number of values, then each
/// value; a string is its length (u32, little-endian) and its UTF-8 bytes. Keys come in
/// the order given (a `UserInfo`'s map is sorted).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Extra(Box<[u8]>);

impl Extra {
    fn encode<'a>(extra: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Extra {
        let mut out = Vec::new();
        for (key, values) in extra {
            match KNOWN_KEYS.iter().position(|k| *k == key) {
                Some(i) => out.push(i as u8),
                None => {
                    out.push(INLINE_KEY);
                    put(&mut out, key);
                }
            }
            out.extend(length(values.len()));
            for value in values {
                put(&mut out, value);
            }
        }
        Extra(out.into_boxed_slice())
    }

    /// Whether there are no extras.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each key and its values.
    pub(crate) fn iter(&self) -> ExtraIter<'_> {
        ExtraIter(&self.0)
    }

    /// The values of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Values<'_>> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

impl std::fmt::Debug for Extra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Extra {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

fn length(n: usize) -> [u8; 4] {
    u32::try_from(n)
        .expect("an API server's answer is far below 4 GiB")
        .to_le_bytes()
}

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend(length(s.len()));
    out.extend(s.as_bytes());
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    head
}

fn take_len(rest: &mut &[u8]) -> usize {
    let bytes: [u8; 4] = take(rest, 4).try_into().expect("four bytes");
    u32::from_le_bytes(bytes) as usize
}

fn take_str<'a>(rest: &mut &'a [u8]) -> &'a str {
    let n = take_len(rest);
    std::str::from_utf8(take(rest, n)).expect("encoded from a str")
}

/// The keys and values of an [`Extra`].
pub(crate) struct ExtraIter<'a>(&'a [u8]);

impl<'a> Iterator for ExtraIter<'a> {
    type Item = (&'a str, Values<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (&tag, mut rest) = self.0.split_first()?;
        let key = match KNOWN_KEYS.get(usize::from(tag)) {
            Some(known) => known,
            None => take_str(&mut rest),
        };
        let count = take_len(&mut rest);
        let values = rest;
        for _ in 0..count {
            let n = take_len(&mut rest);
            take(&mut rest, n);
        }
        self.0 = rest;
        Some((
            key,
            Values {
                rest: values,
                left: count,
            },
        ))
    }
}

/// The values of one extra key.
#[derive(Clone)]
pub(crate) struct Values<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(take_str(&mut self.rest))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Values<'_> {}

impl std::fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.left))?;
        for value in self.clone() {
            seq.serialize_element(value)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod_user(pod: &str) -> UserInfo {
        UserInfo {
            username: Some("system:serviceaccount:apps:web".into()),
            uid: Some("sa-uid-1".into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:apps".into(),
                "system:authenticated".into(),
            ]),
            extra: Some(BTreeMap::from([
                (
                    "authentication.kubernetes.io/pod-name".into(),
                    vec![pod.into()],
                ),
                ("example.com/teams".into(), vec!["a".into(), "b\"é".into()]),
                ("example.com/none".into(), vec![]),
            ])),
        }
    }

    #[test]
    fn a_user_round_trips_and_serialises_as_k8s_openapi_does() {
        for info in [pod_user("web-1"), UserInfo::default()] {
            let user = User::from(info.clone());
            assert_eq!(user.to_user_info(), info);
            assert_eq!(
                serde_json::to_string(&user).unwrap(),
                serde_json::to_string(&info).unwrap()
            );
        }
        let user = User::from(pod_user("web-1"));
        let teams: Vec<_> = user.extra().get("example.com/teams").unwrap().collect();
        assert_eq!(teams, ["a", "b\"é"]);
        assert_eq!(user.extra().get("example.com/none").unwrap().len(), 0);
        assert!(user.extra().get("example.com/absent").is_none());
    }

    #[test]
    fn tokens_of_one_account_share_its_identity_but_not_their_extras() {
        let a = User::from(pod_user("web-1"));
        let b = User::from(pod_user("web-2"));
        assert!(Arc::ptr_eq(&a.identity, &b.identity));
        assert_ne!(a, b);
        let pod = |u: &User| {
            u.extra()
                .get("authentication.kubernetes.io/pod-name")
                .unwrap()
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!((pod(&a), pod(&b)), ("web-1".into(), "web-2".into()));
    }
}
