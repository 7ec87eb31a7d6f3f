//! The verdict cache: key derivation, expiry, and coalescing of concurrent misses.
//!
//! Responsible for: turning (token, audiences, purpose) into a key that is a keyed hash,
//! never the token (HMAC-SHA256 with a random per-process key over length-prefixed parts,
//! so no two different inputs share a key and nobody without the key can compute one);
//! keeping verdicts no longer than the deadline they were stored with (checked against
//! the caller's clock on every read); keeping negative verdicts in a cache of their own,
//! so a flood of bad tokens can only evict other bad tokens; knowing which verdicts stand
//! on which object, so the revocation watch can take them out; and making concurrent
//! misses of one key share one fetch that runs in its own task, so no caller's
//! disconnect cancels it.
//!
//! Not responsible for: deciding how long a verdict may live (see `review::lifetime`).
//!
//! Both caches are moka's: bounded by the configured entry counts (TinyLFU admission,
//! scan resistant), each entry expiring at its verdict's deadline, and an eviction
//! listener that counts evictions and takes the entry out of the dependency index.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use moka::notification::RemovalCause;
use ring::hmac;

use crate::config;
use crate::metrics::{CacheKind, EvictionCause, Metrics};
use crate::upstream::UpstreamError;
use crate::verdict::Verdict;

/// A cache key: HMAC-SHA256 of the token, the audiences and the purpose.
pub(crate) type Key = [u8; 32];

/// Which question a key answers. The same token and audiences asked for different
/// purposes must never share a verdict, as the policies differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A review asked for by a caller (TokenReview, `/auth`).
    Review = 1,
    /// The authentication of a caller of the TokenReview endpoints.
    Caller = 2,
}

/// A fetched verdict and how long it may be kept.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The verdict.
    pub(crate) verdict: Arc<Verdict>,
    /// When it stops being valid, by the caller's clock.
    pub(crate) expires_at: SystemTime,
    /// The same as a duration from now (zero: do not cache).
    pub(crate) ttl: Duration,
    /// The objects whose deletion revokes it (`pod:UID`, `serviceaccount:UID`,
    /// `secret:NS/NAME`): the revocation watch evicts it when one goes.
    pub depends_on: Vec<Dependency>,
    /// For a verdict kept past `max_ttl` because the revocation watch is healthy: when
    /// `max_ttl` would have ended it. Whenever the watch is not healthy, that deadline is
    /// in force again.
    pub(crate) capped_at: Option<SystemTime>,
}

impl Fetched {
    /// A verdict kept `ttl` (until `expires_at`), tied to nothing the watch follows.
    pub fn new(verdict: Arc<Verdict>, expires_at: SystemTime, ttl: Duration) -> Fetched {
        Fetched {
            verdict,
            expires_at,
            ttl,
            depends_on: Vec::new(),
            capped_at: None,
        }
    }
}

/// A time as milliseconds since the epoch (0 before it): eight bytes instead of sixteen,
/// in an entry a million of which must fit in 512 MB.
fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Until when a cached verdict may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadline {
    /// The deadline, in [`millis`].
    expires_at: u64,
    /// `Fetched::capped_at` in [`millis`]; `u64::MAX` when there is none.
    capped_at: u64,
}

impl Deadline {
    /// Whether it has not passed at `now` (in [`millis`]).
    fn is_live(self, now: u64, watch_healthy: bool) -> bool {
        now < self.expires_at && (now < self.capped_at || watch_healthy)
    }
}

/// A Kubernetes object's UID: the 16 bytes of the UUID the API server makes it, or, for
/// one that is not a UUID, 16 bytes of its SHA-256 (both sides of a comparison come from
/// the API server, so they are read alike).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid([u8; 16]);

impl Uid {
    /// The UID written `text`.
    pub fn of(text: &str) -> Uid {
        match uuid::Uuid::try_parse(text) {
            Ok(uuid) => Uid(uuid.into_bytes()),
            Err(_) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
                let mut uid = [0; 16];
                uid.copy_from_slice(&digest.as_ref()[..16]);
                Uid(uid)
            }
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0), f)
    }
}

/// An object whose deletion revokes the verdicts that stand on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    /// A service account, by UID.
    ServiceAccount(Uid),
    /// A pod, by UID.
    Pod(Uid),
    /// A Secret, by `namespace/name`: a legacy token names its Secret, not the UID.
    Secret(Arc<str>),
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependency::ServiceAccount(uid) => write!(f, "serviceaccount:{uid:?}"),
            Dependency::Pod(uid) => write!(f, "pod:{uid:?}"),
            Dependency::Secret(name) => write!(f, "secret:{name}"),
        }
    }
}

#[derive(Clone)]
struct Entry {
    verdict: Arc<Verdict>,
    deadline: Deadline,
    depends_on: Option<Arc<[Dependency]>>,
    /// Which insert made it: the dependency index forgets a key for an entry only while
    /// the index still holds that insert's pairs, not a later one's.
    stamp: u64,
    /// How long moka keeps it: the fetched ttl in milliseconds, at most 49 days (the
    /// caller's clock need not be the system's, so the deadline cannot tell moka).
    keep_millis: u32,
}

/// Which cached verdicts (by key, with the [`Entry::stamp`] that put them there) stand
/// on which object. Ordered, so that one object's verdicts are one range.
type Dependents = Arc<Mutex<BTreeMap<(Dependency, Key), u64>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change under these locks is a single insert or remove: a panic elsewhere
    // cannot leave them half-changed, so a poisoned lock is still good to use.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long the cache remembers an object past the moment its tokens became invalid:
/// well past the 10 s for which the API server answers "yes" from its own cache of
/// successful authentications, whatever happened to the object since.
pub(crate) const REMEMBER_REVOKED: Duration = Duration::from_secs(300);

/// What the revocation watch saw of an object a verdict may stand on (how long its
/// tokens stay valid after that is the API server's rule for the token: see
/// `review::hold_to_revocations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Revoked {
    /// When the watch saw it gone.
    pub(crate) gone_at: Option<SystemTime>,
    /// Its `deletionTimestamp`, while it is being deleted.
    pub(crate) deleting_since: Option<SystemTime>,
}

impl Revoked {
    /// The earlier of both times.
    fn first(&self) -> Option<SystemTime> {
        self.gone_at.into_iter().chain(self.deleting_since).min()
    }
}

/// Takes an entry that left the cache out of the dependency index.
fn forget(dependents: &Dependents, key: &Key, entry: &Entry) {
    let Some(depends_on) = &entry.depends_on else {
        return;
    };
    let mut dependents = lock(dependents);
    for dependency in depends_on.iter() {
        let pair = (dependency.clone(), *key);
        if dependents.get(&pair) == Some(&entry.stamp) {
            dependents.remove(&pair);
        }
    }
}

/// Expires each entry once its verdict's ttl has passed (the deadline itself is checked
/// on every read, against the caller's clock).
struct UntilDeadline;

impl moka::Expiry<Key, Entry> for UntilDeadline {
    fn expire_after_create(&self, _: &Key, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(Duration::from_millis(entry.keep_millis.into()))
    }
}

type Store = moka::sync::Cache<Key, Entry>;

type Outcome = Result<Arc<Verdict>, UpstreamError>;
type Pending = Shared<BoxFuture<'static, Outcome>>;

/// The verdict cache. Share it behind an `Arc`.
pub struct VerdictCache {
    hmac_key: hmac::Key,
    positive: Store,
    negative: Store,
    in_flight: Mutex<HashMap<Key, Pending>>,
    dependents: Dependents,
    /// Numbers the inserts (see [`Entry::stamp`]).
    stamps: AtomicU64,
    /// Whether the revocation watch is healthy (set by `revocation`).
    watch_healthy: AtomicBool,
    /// Counts revocations, so a fetch can tell one happened while it waited.
    revocations: AtomicU64,
    /// Objects deleted or being deleted (see [`VerdictCache::remember_revoked`]).
    revoked: Mutex<HashMap<Dependency, Revoked>>,
}

impl VerdictCache {
    /// A cache sized by the configuration, with a fresh random HMAC key.
    pub fn new(cfg: &config::Cache) -> VerdictCache {
        VerdictCache::with_metrics(cfg, Arc::default())
    }

    /// [`VerdictCache::new`], counting evictions in `metrics`.
    pub(crate) fn with_metrics(cfg: &config::Cache, metrics: Arc<Metrics>) -> VerdictCache {
        let rng = ring::rand::SystemRandom::new();
        let hmac_key =
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the OS random source works");
        let dependents = Dependents::default();
        let build = |capacity: u64, kind: CacheKind| {
            let (metrics, dependents) = (Arc::clone(&metrics), Arc::clone(&dependents));
            Store::builder()
                .max_capacity(capacity)
                .expire_after(UntilDeadline)
                .eviction_listener(move |key: Arc<Key>, entry: Entry, cause| {
                    match cause {
                        RemovalCause::Size => metrics.cache_eviction(kind, EvictionCause::Size),
                        RemovalCause::Expired => {
                            metrics.cache_eviction(kind, EvictionCause::Expired);
                        }
                        RemovalCause::Explicit | RemovalCause::Replaced => {}
                    }
                    forget(&dependents, &key, &entry);
                })
                .build()
        };
        VerdictCache {
            hmac_key,
            positive: build(cfg.max_entries, CacheKind::Positive),
            negative: build(cfg.negative_max_entries, CacheKind::Negative),
            in_flight: Mutex::new(HashMap::new()),
            dependents,
            stamps: AtomicU64::new(0),
            watch_healthy: AtomicBool::new(false),
            revocations: AtomicU64::new(0),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// The key for a token asked about for `audiences` and `purpose`.
    pub fn key(&self, token: &str, audiences: &[String], purpose: Purpose) -> Key {
        let mut ctx = hmac::Context::with_key(&self.hmac_key);
        ctx.update(&[purpose as u8]);
        ctx.update(&(token.len() as u64).to_be_bytes());
        ctx.update(token.as_bytes());
        ctx.update(&(audiences.len() as u64).to_be_bytes());
        for audience in audiences {
            ctx.update(&(audience.len() as u64).to_be_bytes());
            ctx.update(audience.as_bytes());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.sign().as_ref());
        key
    }

    /// The cached verdict for `key`, if there is one that is still valid at `now`.
    pub fn get(&self, key: &Key, now: SystemTime) -> Option<Arc<Verdict>> {
        let entry = self.positive.get(key).or_else(|| self.negative.get(key))?;
        entry
            .deadline
            .is_live(millis(now), self.is_watch_healthy())
            .then_some(entry.verdict)
    }

    /// Stores a fetched verdict (nothing when its ttl is zero).
    pub fn insert(&self, key: Key, fetched: &Fetched) {
        if fetched.ttl.is_zero() {
            return;
        }
        let entry = Entry {
            verdict: fetched.verdict.clone(),
            deadline: Deadline {
                expires_at: millis(fetched.expires_at),
                capped_at: fetched.capped_at.map_or(u64::MAX, millis),
            },
            depends_on: (!fetched.depends_on.is_empty()).then(|| fetched.depends_on.clone().into()),
            stamp: self.stamps.fetch_add(1, Ordering::Relaxed),
            keep_millis: u32::try_from(fetched.ttl.as_millis()).unwrap_or(u32::MAX),
        };
        if let Some(depends_on) = &entry.depends_on {
            let mut dependents = lock(&self.dependents);
            for dependency in depends_on.iter() {
                dependents.insert((dependency.clone(), key), entry.stamp);
            }
        }
        let (into, other) = if fetched.verdict.authenticated {
            (&self.positive, &self.negative)
        } else {
            (&self.negative, &self.positive)
        };
        other.invalidate(&key);
        into.insert(key, entry);
    }

    /// The number of (positive, negative) verdicts held.
    pub fn len(&self) -> (u64, u64) {
        // moka counts once its pending evictions and inserts are applied.
        self.positive.run_pending_tasks();
        self.negative.run_pending_tasks();
        (self.positive.entry_count(), self.negative.entry_count())
    }

    /// Evicts every verdict that depends on `dependency` (an object that was deleted);
    /// returns how many.
    pub(crate) fn revoke(&self, dependency: &Dependency) -> usize {
        self.revocations.fetch_add(1, Ordering::SeqCst);
        let keys: Vec<Key> = {
            let mut dependents = lock(&self.dependents);
            let range = (dependency.clone(), [0; 32])..=(dependency.clone(), [u8::MAX; 32]);
            let keys: Vec<Key> = dependents.range(range).map(|((_, key), _)| *key).collect();
            for key in &keys {
                dependents.remove(&(dependency.clone(), *key));
            }
            keys
        };
        for key in &keys {
            self.positive.invalidate(key);
        }
        keys.len()
    }

    /// Remembers what the watch saw of `dependency` (each time the earliest seen), for
    /// [`REMEMBER_REVOKED`] after it (see [`VerdictCache::revoked`]). Returns whether this
    /// told something new: then the caller evicts the verdicts that depend on it, so that
    /// the next review is held to it.
    pub(crate) fn remember_revoked(
        &self,
        dependency: &Dependency,
        seen: Revoked,
        now: SystemTime,
    ) -> bool {
        let mut known = lock(&self.revoked);
        known.retain(|_, r| r.first().is_some_and(|t| t + REMEMBER_REVOKED > now));
        let old = known.get(dependency).copied().unwrap_or_default();
        let earliest = |a: Option<SystemTime>, b: Option<SystemTime>| a.into_iter().chain(b).min();
        let merged = Revoked {
            gone_at: earliest(old.gone_at, seen.gone_at),
            deleting_since: earliest(old.deleting_since, seen.deleting_since),
        };
        if merged == old {
            return false;
        }
        known.insert(dependency.clone(), merged);
        true
    }

    /// What is remembered of each of `dependencies`, with its index.
    pub fn revoked(&self, dependencies: &[Dependency]) -> Vec<(usize, Revoked)> {
        let known = lock(&self.revoked);
        dependencies
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, *known.get(d)?)))
            .collect()
    }

    /// The objects cached verdicts stand on that `which` selects, each once.
    pub(crate) fn dependencies(&self, which: impl Fn(&Dependency) -> bool) -> Vec<Dependency> {
        let mut out: Vec<Dependency> = lock(&self.dependents)
            .keys()
            .map(|(dependency, _)| dependency)
            .filter(|d| which(d))
            .cloned()
            .collect();
        out.dedup();
        out
    }

    /// Tells the cache whether the revocation watch is healthy: while it is not,
    /// verdicts kept past `max_ttl` on its account are not served past it.
    pub(crate) fn set_watch_healthy(&self, healthy: bool) {
        self.watch_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether the revocation watch is healthy.
    pub fn is_watch_healthy(&self) -> bool {
        self.watch_healthy.load(Ordering::Relaxed)
    }

    /// Drops every verdict (a policy change makes them stale).
    pub(crate) fn clear(&self) {
        self.positive.invalidate_all();
        self.negative.invalidate_all();
    }

    /// The cached verdict for `key`, or the outcome of `fetch`, run once however many
    /// callers ask at the same time. `fetch` runs in a task of its own: it completes (and
    /// its verdict is cached) even when every caller has gone away. Errors are not cached.
    pub(crate) async fn get_or_fetch<F>(
        self: &Arc<Self>,
        key: Key,
        now: SystemTime,
        fetch: F,
    ) -> Outcome
    where
        F: Future<Output = Result<Fetched, UpstreamError>> + Send + 'static,
    {
        let pending = {
            let mut in_flight = lock(&self.in_flight);
            // Checked again under the lock: a fetch may have finished since the caller looked.
            if let Some(verdict) = self.get(&key, now) {
                return Ok(verdict);
            }
            match in_flight.get(&key) {
                Some(pending) => pending.clone(),
                None => {
                    let pending = self.spawn_fetch(key, fetch);
                    in_flight.insert(key, pending.clone());
                    pending
                }
            }
        };
        pending.await
    }

    fn spawn_fetch<F>(self: &Arc<Self>, key: Key, fetch: F) -> Pending
    where
        F: Future<Output = Result<Fetched, UpstreamError>> + Send + 'static,
    {
        let cache = Arc::clone(self);
        let task = tokio::spawn(async move {
            // Removes the in-flight entry however the task ends, panics included.
            let _done = InFlightGuard { cache: &cache, key };
            let revocations = cache.revocations.load(Ordering::SeqCst);
            let fetched = fetch.await?;
            // An object may have been deleted while the API server answered, or while
            // the verdict was stored (a revocation looks the index up before the entry
            // is in the cache): such a verdict is passed on but not kept, lest it
            // outlive the object.
            let revoked_meanwhile = || cache.revocations.load(Ordering::SeqCst) != revocations;
            if fetched.depends_on.is_empty() || !revoked_meanwhile() {
                cache.insert(key, &fetched);
                if !fetched.depends_on.is_empty() && revoked_meanwhile() {
                    cache.positive.invalidate(&key);
                }
            }
            Ok(fetched.verdict)
        });
        task.map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(UpstreamError::BadResponse(format!(
                    "the review task failed: {e}"
                )))
            })
        })
        .boxed()
        .shared()
    }
}

struct InFlightGuard<'a> {
    cache: &'a VerdictCache,
    key: Key,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.cache.in_flight).remove(&self.key);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cfg(max_entries: u64, negative_max_entries: u64) -> config::Cache {
        config::Cache {
            max_entries,
            negative_max_entries,
            negative_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(120),
        }
    }

    fn fetched(authenticated: bool, ttl: u64, now: SystemTime) -> Fetched {
        Fetched::new(
            Arc::new(Verdict {
                authenticated,
                ..Verdict::default()
            }),
            now + Duration::from_secs(ttl),
            Duration::from_secs(ttl),
        )
    }

    fn aud(a: &str) -> Vec<String> {
        vec![a.to_string()]
    }

    #[test]
    fn keys_separate_tokens_audiences_and_purposes() {
        let cache = VerdictCache::new(&cfg(10, 10));
        let k = cache.key("tok", &aud("vault"), Purpose::Review);
        assert_eq!(k, cache.key("tok", &aud("vault"), Purpose::Review));
        assert_ne!(k, cache.key("tok", &aud("api"), Purpose::Review));
        assert_ne!(k, cache.key("tok", &aud("vault"), Purpose::Caller));
        assert_ne!(k, cache.key("tok2", &aud("vault"), Purpose::Review));
        // Length prefixes: moving a byte between token and audience changes the key.
        assert_ne!(
            cache.key("ab", &aud("c"), Purpose::Review),
            cache.key("a", &aud("bc"), Purpose::Review)
        );
        assert_ne!(
            cache.key("t", &["a".into(), "b".into()], Purpose::Review),
            cache.key("t", &aud("ab"), Purpose::Review)
        );
        // A second process (another random key) derives other keys for the same input.
        let other = VerdictCache::new(&cfg(10, 10));
        assert_ne!(k, other.key("tok", &aud("vault"), Purpose::Review));
    }

    #[test]
    fn a_verdict_is_not_served_at_or_after_its_deadline() {
        let cache = VerdictCache::new(&cfg(10, 10));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let key = cache.key("tok", &aud("vault"), Purpose::Review);
        cache.insert(key, &fetched(true, 60, now));
        assert!(cache.get(&key, now + Duration::from_secs(59)).is_some());
        assert!(cache.get(&key, now + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn a_zero_ttl_is_not_cached() {
        let cache = VerdictCache::new(&cfg(10, 10));
        let now = SystemTime::now();
        let key = cache.key("tok", &aud("vault"), Purpose::Review);
        cache.insert(key, &fetched(true, 0, now));
        assert!(cache.get(&key, now).is_none());
    }

    #[test]
    fn a_flood_of_negative_verdicts_does_not_evict_positive_ones() {
        let cache = VerdictCache::new(&cfg(100, 50));
        let now = SystemTime::now();
        let good: Vec<Key> = (0..50)
            .map(|i| cache.key(&format!("good-{i}"), &aud("vault"), Purpose::Review))
            .collect();
        for k in &good {
            cache.insert(*k, &fetched(true, 600, now));
        }
        for i in 0..5_000 {
            let k = cache.key(&format!("forged-{i}"), &aud("vault"), Purpose::Review);
            cache.insert(k, &fetched(false, 600, now));
        }
        let (positive, negative) = cache.len();
        assert_eq!(positive, 50);
        assert!(negative <= 50, "negative cache kept {negative}");
        assert!(good.iter().all(|k| cache.get(k, now).is_some()));
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch_that_survives_its_callers() {
        let cache = Arc::new(VerdictCache::new(&cfg(10, 10)));
        let now = SystemTime::now();
        let key = cache.key("tok", &aud("vault"), Purpose::Review);
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let started = Arc::new(tokio::sync::Notify::new());
        let fetch = || {
            let calls = calls.clone();
            let started = started.clone();
            let mut released = released.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                started.notify_one();
                released.wait_for(|r| *r).await.unwrap();
                Ok(fetched(true, 60, now))
            }
        };
        // The first caller goes away before the answer comes.
        let first = tokio::spawn({
            let cache = cache.clone();
            let f = fetch();
            async move { cache.get_or_fetch(key, now, f).await }
        });
        started.notified().await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                let f = fetch();
                tokio::spawn(async move { cache.get_or_fetch(key, now, f).await })
            })
            .collect();
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        for w in waiters {
            assert!(w.await.unwrap().unwrap().authenticated);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.get(&key, now).is_some());
        assert!(cache.in_flight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = Arc::new(VerdictCache::new(&cfg(10, 10)));
        let now = SystemTime::now();
        let key = cache.key("tok", &aud("vault"), Purpose::Review);
        let out = cache
            .get_or_fetch(key, now, async {
                Err(UpstreamError::Timeout(Duration::from_secs(5)))
            })
            .await;
        assert!(out.is_err());
        assert!(cache.get(&key, now).is_none());
        let out = cache
            .get_or_fetch(key, now, async move { Ok(fetched(false, 10, now)) })
            .await;
        assert!(!out.unwrap().authenticated);
        assert!(cache.get(&key, now).is_some());
    }

    /// `pod:NAME`, `serviceaccount:NAME` or `secret:NS/NAME`, a name standing for a UID.
    pub(crate) fn dep(text: &str) -> Dependency {
        match text.split_once(':') {
            Some(("pod", uid)) => Dependency::Pod(Uid::of(uid)),
            Some(("serviceaccount", uid)) => Dependency::ServiceAccount(Uid::of(uid)),
            Some(("secret", name)) => Dependency::Secret(name.into()),
            _ => panic!("not a dependency: {text}"),
        }
    }

    fn pods(cache: &VerdictCache) -> Vec<Dependency> {
        cache.dependencies(|d| matches!(d, Dependency::Pod(_)))
    }

    fn tracked(ttl: u64, now: SystemTime, deps: &[&str], capped_after: Option<u64>) -> Fetched {
        let mut f = fetched(true, ttl, now);
        f.depends_on = deps.iter().map(|d| dep(d)).collect();
        f.capped_at = capped_after.map(|s| now + Duration::from_secs(s));
        f
    }

    #[test]
    fn revoking_an_object_evicts_exactly_the_verdicts_that_depend_on_it() {
        let cache = VerdictCache::new(&cfg(100, 10));
        let now = SystemTime::now();
        let (a, b, c) = (
            cache.key("a", &aud("vault"), Purpose::Review),
            cache.key("b", &aud("vault"), Purpose::Review),
            cache.key("c", &aud("vault"), Purpose::Review),
        );
        cache.insert(
            a,
            &tracked(600, now, &["pod:p1", "serviceaccount:s1"], None),
        );
        cache.insert(
            b,
            &tracked(600, now, &["pod:p2", "serviceaccount:s1"], None),
        );
        cache.insert(c, &tracked(600, now, &[], None));
        let mut expected = [dep("pod:p1"), dep("pod:p2")];
        expected.sort();
        assert_eq!(pods(&cache), expected);
        assert_eq!(cache.revoke(&dep("pod:p1")), 1);
        assert!(cache.get(&a, now).is_none());
        assert!(cache.get(&b, now).is_some() && cache.get(&c, now).is_some());
        assert_eq!(
            cache.revoke(&dep("serviceaccount:s1")),
            1,
            "a is gone already"
        );
        assert!(cache.get(&b, now).is_none());
        assert_eq!(cache.revoke(&dep("pod:nobody")), 0);
        assert!(pods(&cache).is_empty(), "b's pod left the index with b");
    }

    #[test]
    fn expired_verdicts_leave_the_cache_and_their_place_in_the_dependency_index() {
        let cache = VerdictCache::new(&cfg(10, 10));
        let now = SystemTime::now();
        let (a, b) = (
            cache.key("a", &aud("vault"), Purpose::Review),
            cache.key("b", &aud("vault"), Purpose::Review),
        );
        let mut brief = tracked(600, now, &["pod:p1"], None);
        brief.ttl = Duration::from_millis(20);
        cache.insert(a, &brief);
        cache.insert(b, &tracked(600, now, &["pod:p2"], None));
        // moka's clock is the system's own: its expiry can only be waited for.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cache.len() != (1, 0) {
            assert!(std::time::Instant::now() < deadline, "{:?}", cache.len());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pods(&cache), [dep("pod:p2")]);
        assert!(cache.get(&b, now).is_some());
    }

    #[test]
    fn a_verdict_evicted_for_room_leaves_the_dependency_index_too() {
        let cache = VerdictCache::new(&cfg(64, 10));
        let now = SystemTime::now();
        for i in 0..1_000 {
            let key = cache.key(&format!("t{i}"), &aud("vault"), Purpose::Review);
            cache.insert(key, &tracked(600, now, &[&format!("pod:p{i}")], None));
        }
        let (held, _) = cache.len();
        assert!(held < 200, "{held} held");
        assert_eq!(pods(&cache).len() as u64, held);
    }

    #[test]
    fn a_verdict_stored_again_for_the_same_key_stays_revocable() {
        let cache = VerdictCache::new(&cfg(10, 10));
        let now = SystemTime::now();
        let key = cache.key("t", &aud("vault"), Purpose::Review);
        cache.insert(key, &tracked(600, now, &["pod:p"], None));
        // Fetched again (say, after its max_ttl cap while the watch was down).
        cache.insert(key, &tracked(600, now, &["pod:p"], None));
        assert_eq!(pods(&cache), [dep("pod:p")]);
        assert_eq!(cache.revoke(&dep("pod:p")), 1);
        assert!(cache.get(&key, now).is_none());
    }

    #[test]
    fn a_cache_holds_max_entries_verdicts_before_it_evicts_any() {
        let cache = VerdictCache::new(&cfg(20_000, 10));
        let now = SystemTime::now();
        for i in 0..20_000 {
            let key = cache.key(&format!("t{i}"), &aud("vault"), Purpose::Review);
            cache.insert(key, &fetched(true, 600, now));
        }
        assert_eq!(cache.len(), (20_000, 0));
    }

    #[test]
    fn a_verdict_kept_past_max_ttl_falls_back_to_it_while_the_watch_is_unhealthy() {
        let cache = VerdictCache::new(&cfg(10, 10));
        let now = SystemTime::now();
        let key = cache.key("t", &aud("vault"), Purpose::Review);
        cache.insert(key, &tracked(3600, now, &["pod:p"], Some(120)));
        let later = now + Duration::from_secs(600);
        cache.set_watch_healthy(true);
        assert!(cache.get(&key, later).is_some());
        cache.set_watch_healthy(false);
        assert!(cache.get(&key, later).is_none());
        assert!(cache.get(&key, now + Duration::from_secs(60)).is_some());
    }

    #[tokio::test]
    async fn a_verdict_fetched_while_a_revocation_happened_is_passed_on_but_not_kept() {
        let cache = Arc::new(VerdictCache::new(&cfg(10, 10)));
        let now = SystemTime::now();
        let key = cache.key("t", &aud("vault"), Purpose::Review);
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let fetch = async move {
            let _ = answered.await;
            Ok(tracked(600, now, &["pod:p"], None))
        };
        let pending = tokio::spawn({
            let cache = Arc::clone(&cache);
            async move { cache.get_or_fetch(key, now, fetch).await }
        });
        tokio::task::yield_now().await;
        // The delete event arrives while the API server's answer is on its way.
        while cache.in_flight.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        cache.revoke(&dep("pod:p"));
        answer.send(()).unwrap();
        assert!(pending.await.unwrap().unwrap().authenticated);
        assert!(cache.get(&key, now).is_none());
    }

    proptest::proptest! {
        #[test]
        fn a_cache_key_is_never_shared_by_two_audience_sets(
            token in ".{0,40}",
            a in proptest::collection::vec("[a-z0-9.-]{0,8}", 0..4),
            b in proptest::collection::vec("[a-z0-9.-]{0,8}", 0..4),
        ) {
            use proptest::prelude::*;
            static CACHE: std::sync::OnceLock<VerdictCache> = std::sync::OnceLock::new();
            let cache = CACHE.get_or_init(|| VerdictCache::new(&cfg(16, 16)));
            let ka = cache.key(&token, &a, Purpose::Review);
            prop_assert_eq!(ka, cache.key(&token, &a, Purpose::Review));
            if a != b {
                prop_assert_ne!(ka, cache.key(&token, &b, Purpose::Review),
                                "{:?} and {:?} share a key", a, b);
            }
            // Nor across purposes, nor with a token that spells the same bytes once the
            // audiences are run together.
            prop_assert_ne!(ka, cache.key(&token, &a, Purpose::Caller));
            let joined = format!("{token}{}", a.concat());
            if !a.concat().is_empty() {
                prop_assert_ne!(ka, cache.key(&joined, &[], Purpose::Review));
            }
        }
    }
}
