//! The decision pipeline: token → cache → local checks → upstream → [`Decision`].
//!
//! Responsible for: answering "is this token valid for these audiences, and whose is
//! it?" with as little work as possible. A cache hit costs a keyed hash and a lookup.
//! On a miss the token is classified and checked locally; a token that cannot be valid
//! is rejected here with a reason and never reaches the API server; any other goes to
//! the API server once (concurrent misses share the call), and the answer is checked
//! before it is believed or cached: a "yes" must be for a requested audience and, for a
//! service-account JWT, for the service account its claims name.
//!
//! Not responsible for: HTTP (see `http`), the wire protocol to the API server (see
//! `upstream`). A denial is a [`Verdict`], not an error; only "cannot decide now" is an `Err`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

use crate::cache::{Dependency, Fetched, Purpose, Uid, VerdictCache};
use crate::config::{self, Config, OnUnavailable, UnknownKid};
use crate::keys::{Keys, Verification};
use crate::metrics::{Metrics, RejectionClass};
use crate::token::{self, Classified, Kind, Rejection, ServiceAccountToken};
use crate::upstream::{Upstream, UpstreamError};
use crate::verdict::{self, Decision, Fingerprint, OFFLINE_EXTRA, Source, User, Verdict};

/// Where time comes from. Injected so tests can move it.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The verdict the API server would give a service-account token whose signature,
/// issuer, times and audience verified locally, marked as decided offline. `None` for
/// tokens it cannot be given to: unverified ones, and legacy ones (whose validity hangs
/// on a Secret only the API server can see).
fn offline_verdict(e: &Expectation) -> Option<Verdict> {
    let (t, audiences) = e.token.as_ref()?;
    let c = &t.claims;
    // A UID the claims lack is one only the API server could compare with the object's.
    let unchecked =
        c.service_account.uid.is_empty() || c.pod.as_ref().is_some_and(|p| p.uid.is_empty());
    if !e.verified || e.legacy || unchecked {
        return None;
    }
    let mut extra = std::collections::BTreeMap::new();
    if let Some(pod) = &c.pod {
        extra.insert(
            "authentication.kubernetes.io/pod-name".to_string(),
            vec![pod.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".to_string(),
            vec![pod.uid.clone()],
        );
    }
    if let Some(jti) = &c.jti {
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_string(),
            vec![format!("JTI={jti}")],
        );
    }
    extra.insert(OFFLINE_EXTRA.to_string(), vec!["true".to_string()]);
    Some(Verdict {
        authenticated: true,
        user: Some(User::from(UserInfo {
            username: Some(t.username()),
            uid: Some(c.service_account.uid.clone()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", c.namespace),
                "system:authenticated".into(),
            ]),
            extra: Some(extra),
        })),
        audiences: verdict::audiences(audiences.clone()),
        error: String::new(),
    })
}

/// A local rejection's class, as a metric label.
fn class(rejection: &Rejection) -> RejectionClass {
    match rejection {
        Rejection::TooLarge { .. } => RejectionClass::TooLarge,
        Rejection::Malformed { .. } => RejectionClass::Malformed,
        Rejection::Expired { .. } => RejectionClass::Expired,
        Rejection::NotYetValid { .. } => RejectionClass::NotYetValid,
        Rejection::IssuedInTheFuture { .. } => RejectionClass::IssuedInTheFuture,
        Rejection::Audience { .. } => RejectionClass::Audience,
        Rejection::SubjectMismatch { .. } => RejectionClass::SubjectMismatch,
        Rejection::LegacyNotAllowed { .. } => RejectionClass::Legacy,
        Rejection::ForeignAudience { .. } => RejectionClass::Foreign,
    }
}

/// The pipeline. Share it behind an `Arc`.
pub struct Reviewer {
    settings: RwLock<Arc<Settings>>,
    cache: Arc<VerdictCache>,
    upstream: Arc<Upstream>,
    keys: Option<Arc<Keys>>,
    /// Whether the revocation watch runs (so verdicts record what they depend on).
    revocation_watch: bool,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

/// What the local checks learnt about a token that goes to the API server, to judge
/// its answer and the verdict's lifetime by.
#[derive(Clone)]
struct Expectation {
    /// For a service-account JWT: the username and service-account UID its claims name.
    identity: Option<(String, String)>,
    /// `exp`, when known.
    expires_at: Option<i64>,
    /// Whether it is a legacy token (kept only `legacy_ttl`).
    legacy: bool,
    /// For a service-account JWT: the token, and the requested audiences it is valid for.
    token: Option<(Arc<ServiceAccountToken>, Vec<String>)>,
    /// Whether its signature verified locally.
    verified: bool,
}

/// The part of the configuration the pipeline decides by; replaced whole on a reload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// What the gate accepts.
    pub(crate) policy: config::Policy,
    /// How long verdicts are kept.
    pub(crate) lifetimes: Lifetimes,
    /// What a token signed by no published key gets.
    pub(crate) unknown_kid: UnknownKid,
}

impl Settings {
    /// The settings of a configuration.
    pub(crate) fn of(config: &Config) -> Settings {
        Settings {
            policy: config.policy.clone(),
            lifetimes: Lifetimes {
                max_ttl: config.cache.max_ttl,
                negative_ttl: config.cache.negative_ttl,
                legacy_ttl: config.policy.legacy_ttl,
            },
            unknown_kid: config
                .verify
                .as_ref()
                .map_or(UnknownKid::Reject, |v| v.unknown_kid),
        }
    }
}

impl Reviewer {
    /// A pipeline over `upstream` with the configured policy and cache.
    pub(crate) fn new(
        config: &Config,
        upstream: Arc<Upstream>,
        keys: Option<Arc<Keys>>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Reviewer {
        Reviewer {
            settings: RwLock::new(Arc::new(Settings::of(config))),
            cache: Arc::new(VerdictCache::with_metrics(
                &config.cache,
                Arc::clone(&metrics),
            )),
            upstream,
            keys,
            revocation_watch: config.revocation.watch,
            clock,
            metrics,
        }
    }

    /// The issuer's keys, when signatures are checked locally.
    pub fn keys(&self) -> Option<&Arc<Keys>> {
        self.keys.as_ref()
    }

    /// The settings in force.
    pub(crate) fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().expect("settings lock"))
    }

    /// A local "no": counted, logged at debug, kept in the cache when `keep` says so.
    fn local_rejection(
        &self,
        key: crate::cache::Key,
        verdict: Verdict,
        class: RejectionClass,
        keep: Option<(SystemTime, Duration)>,
    ) -> Decision {
        self.metrics.decision(Source::Local);
        self.metrics.local_rejection(class);
        tracing::debug!(fingerprint = %Fingerprint::of(&key), reason = %verdict.error, "token rejected locally");
        let verdict = Arc::new(verdict);
        if let Some((now, ttl)) = keep {
            self.cache
                .insert(key, &Fetched::new(Arc::clone(&verdict), now + ttl, ttl));
        }
        Decision {
            verdict,
            source: Source::Local,
            fingerprint: Fingerprint::of(&key),
        }
    }

    /// Takes the policy and verdict lifetimes of `config`. When they changed, every
    /// cached verdict is dropped: one decided under the old policy (say, a legacy token
    /// when they were allowed) must not outlive it. Returns whether anything changed.
    pub(crate) fn reconfigure(&self, config: &Config) -> bool {
        let new = Settings::of(config);
        let mut settings = self.settings.write().expect("settings lock");
        if **settings == new {
            return false;
        }
        *settings = Arc::new(new);
        drop(settings);
        self.cache.clear();
        true
    }

    /// The metrics every stage counts into.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The API server client (readiness, time budget, access reviews).
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The verdict cache.
    pub fn cache(&self) -> &Arc<VerdictCache> {
        &self.cache
    }

    /// The time by the gate's clock. A request reads it once and is judged at it
    /// throughout: a clock read costs about 80 ns on this kind of virtual machine.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Reviews a workload's token for `audiences` (non-empty: the caller resolves the
    /// default) at `now` (from [`Reviewer::now`]).
    pub async fn review(
        &self,
        token: &str,
        audiences: &[String],
        now: SystemTime,
    ) -> Result<Decision, UpstreamError> {
        let key = self.cache.key(token, audiences, Purpose::Review);
        self.decide(token, audiences, Purpose::Review, key, now)
            .await
    }

    /// Authenticates a caller of the TokenReview endpoints as the API server would
    /// authenticate a request to itself: for its own audiences, legacy tokens included
    /// (Vault's `token_reviewer_jwt` is often one), through the cache like any token, so
    /// expiry, revocation and a reload apply to it alike. Returns the settings it was
    /// judged under: the request is best answered under the same, rather than under a
    /// reload's that came in between.
    pub(crate) async fn authenticate_caller(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<(Decision, Arc<Settings>), UpstreamError> {
        let settings = self.settings();
        let audiences = &settings.policy.api_audiences;
        let key = self.cache.key(token, audiences, Purpose::Caller);
        let decision = self
            .decide(token, audiences, Purpose::Caller, key, now)
            .await?;
        Ok((decision, settings))
    }

    /// A cached verdict costs a lookup (the key is computed by the caller); anything
    /// else is decided in [`Reviewer::decide_afresh`], behind a box: its future (the
    /// signature check, the coalesced API-server call) is over 5 KiB, and unboxed it
    /// would be copied on every request, cached or not, each time the future moves.
    async fn decide(
        &self,
        token: &str,
        audiences: &[String],
        purpose: Purpose,
        key: crate::cache::Key,
        now: SystemTime,
    ) -> Result<Decision, UpstreamError> {
        if let Some(verdict) = self.cache.get(&key, now) {
            self.metrics.decision(Source::Cache);
            return Ok(Decision {
                verdict,
                source: Source::Cache,
                fingerprint: Fingerprint::of(&key),
            });
        }
        Box::pin(self.decide_afresh(token, audiences, purpose, key, now)).await
    }

    /// A token not in the cache: the local checks, then the API server.
    #[tracing::instrument(skip_all, name = "review")]
    async fn decide_afresh(
        &self,
        token: &str,
        audiences: &[String],
        purpose: Purpose,
        key: crate::cache::Key,
        now: SystemTime,
    ) -> Result<Decision, UpstreamError> {
        let settings = self.settings();
        let mut expectation = match local_checks(&settings.policy, token, audiences, purpose, now) {
            Ok(e) => e,
            Err(rejection) => {
                // A token that is expired, malformed or for other audiences stays so: keep
                // the answer like the API server's "no", so a repeat costs a lookup. One
                // that is not valid *yet* will be, so it is checked afresh each time.
                let not_yet = matches!(
                    rejection,
                    Rejection::NotYetValid { .. } | Rejection::IssuedInTheFuture { .. }
                );
                let keep = (!not_yet).then_some((now, settings.lifetimes.negative_ttl));
                tracing::debug!(fingerprint = %Fingerprint::of(&key), reason = %rejection, "token rejected locally");
                let verdict = Verdict::denied(rejection.status_error());
                return Ok(self.local_rejection(key, verdict, class(&rejection), keep));
            }
        };
        if let (Some(keys), Some((parsed, _))) = (&self.keys, &expectation.token) {
            match keys.verify(token, &parsed.header).await {
                Verification::Valid => expectation.verified = true,
                Verification::Invalid(reason) => {
                    // A forged token stays forged: keep the answer, so it costs no
                    // signature check the next time either.
                    tracing::debug!(fingerprint = %Fingerprint::of(&key), %reason, "token rejected locally");
                    let ttl = settings.lifetimes.negative_ttl;
                    let verdict = Verdict::denied(token::wrapped(token::CRYPTO_FAILURE));
                    return Ok(self.local_rejection(
                        key,
                        verdict,
                        RejectionClass::Signature,
                        Some((now, ttl)),
                    ));
                }
                Verification::UnknownKey(reason) if settings.unknown_kid == UnknownKid::Reject => {
                    tracing::debug!(fingerprint = %Fingerprint::of(&key), %reason, "token rejected locally (verify.unknown_kid = \"forward\" lets the API server decide)");
                    let verdict = Verdict::denied(token::wrapped(token::NO_KEYS_FOUND));
                    return Ok(self.local_rejection(
                        key,
                        verdict,
                        RejectionClass::UnknownKey,
                        None,
                    ));
                }
                Verification::UnknownKey(reason) | Verification::Unverifiable(reason) => {
                    tracing::debug!(fingerprint = %Fingerprint::of(&key), %reason, "signature not checked locally; the API server decides");
                }
            }
        }
        let offline = (settings.policy.on_upstream_unavailable == OnUnavailable::VerifyOffline)
            .then(|| offline_verdict(&expectation))
            .flatten();
        let miss = Miss {
            token: token.to_owned(),
            audiences: audiences.to_vec(),
            api_audiences: settings.policy.api_audiences.clone(),
            lifetimes: settings.lifetimes,
            expectation,
        };
        let watched = self.revocation_watch.then(|| Arc::clone(&self.cache));
        let fetch = fetch(
            Arc::clone(&self.upstream),
            Arc::clone(&self.clock),
            watched,
            miss,
        );
        let verdict = match self.cache.get_or_fetch(key, now, fetch).await {
            Ok(verdict) => verdict,
            Err(e) if e.is_unavailability() && offline.is_some() => {
                let verdict = Arc::new(offline.expect("checked above"));
                let ttl = settings.policy.offline_ttl;
                self.cache
                    .insert(key, &Fetched::new(Arc::clone(&verdict), now + ttl, ttl));
                self.metrics.decision(Source::Offline);
                tracing::warn!(fingerprint = %Fingerprint::of(&key), error = %e, "the API server cannot be reached: token answered from its verified claims");
                return Ok(Decision {
                    verdict,
                    source: Source::Offline,
                    fingerprint: Fingerprint::of(&key),
                });
            }
            Err(e) => return Err(e),
        };
        self.metrics.decision(Source::Upstream);
        tracing::debug!(
            fingerprint = %Fingerprint::of(&key),
            authenticated = verdict.authenticated,
            "token decided by the API server"
        );
        Ok(Decision {
            verdict,
            source: Source::Upstream,
            fingerprint: Fingerprint::of(&key),
        })
    }
}

/// The API server's rules that need no I/O; `Ok` means "ask the API server".
fn local_checks(
    policy: &config::Policy,
    raw: &str,
    audiences: &[String],
    purpose: Purpose,
    now: SystemTime,
) -> Result<Expectation, Rejection> {
    let api_audiences = &policy.api_audiences;
    match token::classify(raw, &policy.issuers)? {
        Classified::Foreign(why) => {
            // Only the API server's other authenticators could know this token, and
            // they authenticate only for the API server's own audiences.
            if token::intersect(audiences, api_audiences).is_empty() {
                return Err(Rejection::ForeignAudience {
                    why,
                    api_audiences: api_audiences.clone(),
                    requested: audiences.to_vec(),
                });
            }
            Ok(Expectation {
                identity: None,
                expires_at: None,
                legacy: false,
                token: None,
                verified: false,
            })
        }
        Classified::ServiceAccount(t) => {
            let legacy = t.kind == Kind::Legacy;
            if legacy && !policy.allow_legacy_tokens && purpose == Purpose::Review {
                return Err(Rejection::LegacyNotAllowed {
                    username: t.username(),
                });
            }
            let valid = token::check(&t, audiences, api_audiences, now)?;
            Ok(Expectation {
                identity: Some((t.username(), t.claims.service_account.uid.clone())),
                expires_at: t.claims.expires_at,
                legacy,
                token: Some((Arc::from(t), valid)),
                verified: false,
            })
        }
    }
}

/// How long each kind of verdict may be kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lifetimes {
    /// Cap on a positive verdict.
    pub(crate) max_ttl: Duration,
    /// A definitive negative.
    pub(crate) negative_ttl: Duration,
    /// A legacy token's positive verdict.
    pub(crate) legacy_ttl: Duration,
}

/// How long a verdict may be cached from `now`: a positive one until the token's `exp`
/// and never past it, capped by `max_ttl` (`legacy_ttl` for a legacy token); a negative
/// one `negative_ttl`. Zero means "do not cache" (a token the API server accepted in the
/// leeway after its `exp`).
pub(crate) fn lifetime(
    authenticated: bool,
    expires_at: Option<i64>,
    legacy: bool,
    now: SystemTime,
    l: Lifetimes,
) -> Duration {
    if !authenticated {
        return l.negative_ttl;
    }
    let cap = if legacy { l.legacy_ttl } else { l.max_ttl };
    match expires_at {
        None => cap,
        Some(exp) => {
            let exp = UNIX_EPOCH.checked_add(Duration::from_secs(exp.max(0).unsigned_abs()));
            let left = exp
                .and_then(|e| e.duration_since(now).ok())
                .unwrap_or(Duration::ZERO);
            left.min(cap)
        }
    }
}

/// What a miss needs to ask the API server and judge its answer.
struct Miss {
    token: String,
    audiences: Vec<String>,
    api_audiences: Vec<String>,
    lifetimes: Lifetimes,
    expectation: Expectation,
}

/// The upstream half of a miss, as a `'static` future for the cache to run once.
/// `watched` is the cache when the revocation watch runs (its health decides whether a
/// verdict may outlive `max_ttl`).
async fn fetch(
    upstream: Arc<Upstream>,
    clock: Arc<dyn Clock>,
    watched: Option<Arc<VerdictCache>>,
    miss: Miss,
) -> Result<Fetched, UpstreamError> {
    let Miss {
        token,
        audiences,
        api_audiences,
        lifetimes,
        expectation,
    } = miss;
    let status = upstream.review(&token, &audiences).await.inspect_err(|e| {
        tracing::warn!(error = %e, "TokenReview to the API server failed");
    })?;
    let verdict = judge(status, &expectation, &audiences, &api_audiences).inspect_err(|e| {
        tracing::warn!(error = %e, "the API server's TokenReview answer was refused");
    })?;
    let now = clock.now();
    let e = &expectation;
    let ttl = lifetime(
        verdict.authenticated,
        e.expires_at,
        e.legacy,
        now,
        lifetimes,
    );
    let mut fetched = Fetched::new(Arc::new(verdict), now + ttl, ttl);
    let Some(cache) = watched else {
        return Ok(fetched);
    };
    fetched.depends_on = dependencies(&fetched.verdict, e);
    // With the watch healthy, a verdict it can revoke lives until the token's exp: the
    // watch, not max_ttl, bounds how long a deleted object's token stays valid here.
    let until_exp = Lifetimes {
        max_ttl: Duration::MAX,
        ..lifetimes
    };
    let extended = lifetime(
        fetched.verdict.authenticated,
        e.expires_at,
        e.legacy,
        now,
        until_exp,
    );
    if cache.is_watch_healthy() && !fetched.depends_on.is_empty() && !e.legacy && extended > ttl {
        fetched.capped_at = Some(fetched.expires_at);
        fetched.expires_at = now + extended;
        fetched.ttl = extended;
    }
    Ok(hold_to_revocations(&cache, fetched, e.legacy, now))
}

/// Holds a "yes" to what the watch has seen of the objects it stands on. The API server
/// keeps a successful authentication for 10 s, so it may still say "yes" for a token
/// whose pod or service account the watch has seen deleted: such a "yes" becomes the
/// "no" it will say once that cache has expired, and is not kept. A "yes" for a token
/// whose object is being deleted stands until the object's `deletionTimestamp` plus the
/// API server's leeway (`claims.go`: a pod's `preStop` hook may still log in; a `legacy`
/// token has none, `legacy.go`), and is kept no longer.
fn hold_to_revocations(
    cache: &VerdictCache,
    mut fetched: Fetched,
    legacy: bool,
    now: SystemTime,
) -> Fetched {
    if !fetched.verdict.authenticated {
        return fetched;
    }
    let leeway = if legacy {
        Duration::ZERO
    } else {
        Duration::from_secs(token::LEEWAY_SECONDS.unsigned_abs())
    };
    // The first moment any object it stands on makes the token invalid.
    let first = cache
        .revoked(&fetched.depends_on)
        .into_iter()
        .filter_map(|(i, seen)| {
            let past_leeway = seen.deleting_since.map(|t| t + leeway);
            let from = seen.gone_at.into_iter().chain(past_leeway).min()?;
            Some((from, i, seen.gone_at.is_some_and(|t| t <= from)))
        })
        .min();
    let Some((from, i, gone)) = first else {
        return fetched;
    };
    if from <= now {
        let username = fetched.verdict.user.as_ref().map_or("", |u| u.username());
        let error = revoked_error(&fetched.depends_on[i], gone, username, legacy);
        tracing::debug!(%error, "the API server's \"yes\" is for a token whose object the watch saw deleted");
        return Fetched::new(Arc::new(Verdict::denied(error)), now, Duration::ZERO);
    }
    if from < fetched.expires_at {
        fetched.expires_at = from;
        fetched.ttl = from.duration_since(now).unwrap_or_default();
        fetched.capped_at = fetched.capped_at.map(|c| c.min(from));
    }
    fetched
}

/// What the API server answers for a token bound to an object that is `gone` or past its
/// deletion leeway (`pkg/serviceaccount/claims.go`, and `legacy.go` for a `legacy`
/// token), for the service account `username`.
fn revoked_error(dependency: &Dependency, gone: bool, username: &str, legacy: bool) -> String {
    let account = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|a| a.split_once(':'));
    let reason = match (dependency, account) {
        (Dependency::Secret(_), _) if legacy => "Token has been invalidated".to_owned(),
        (Dependency::ServiceAccount(_), Some((_, name))) if gone => {
            format!("serviceaccounts \"{name}\" not found")
        }
        (Dependency::ServiceAccount(_), Some((ns, name))) if legacy => {
            format!("ServiceAccount {ns}/{name} has been deleted")
        }
        (Dependency::ServiceAccount(_), Some((ns, name))) => {
            format!("service account {ns}/{name} has been deleted")
        }
        _ => "service account token has been invalidated".to_owned(),
    };
    format!("[invalid bearer token, {reason}]")
}

/// The objects a verdict stands on, as the revocation watch names them: the service
/// account and the bound pod the API server's answer names (no token is parsed again),
/// and a legacy token's Secret.
fn dependencies(verdict: &Verdict, e: &Expectation) -> Vec<Dependency> {
    let mut out = Vec::new();
    let Some(user) = verdict.user.as_ref().filter(|_| verdict.authenticated) else {
        return out;
    };
    let is_service_account = user.username().starts_with("system:serviceaccount:");
    if is_service_account && !user.uid().is_empty() {
        out.push(Dependency::ServiceAccount(Uid::of(user.uid())));
    }
    if let Some(pods) = user.extra().get("authentication.kubernetes.io/pod-uid") {
        out.extend(pods.map(|uid| Dependency::Pod(Uid::of(uid))));
    }
    // A legacy token's Secret, or the Secret a projected token is bound to (the answer
    // does not name it: the claims do).
    if let Some((t, _)) = e.token.as_ref()
        && let Some(secret) = &t.claims.secret
    {
        out.push(Dependency::Secret(
            format!("{}/{}", t.claims.namespace, secret.name).into(),
        ));
    }
    out
}

/// Believes an upstream answer only when it is an answer to this review: a "yes" for a
/// requested audience and, for a service-account JWT, for its own service account.
fn judge(
    status: TokenReviewStatus,
    expect: &Expectation,
    requested: &[String],
    api_audiences: &[String],
) -> Result<Verdict, UpstreamError> {
    if status.authenticated != Some(true) {
        let error = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the API server did not authenticate the token".into());
        return Ok(Verdict::denied(error));
    }
    let audiences = status.audiences.unwrap_or_default();
    // An empty list means the API server's own audiences (its webhook authenticator reads it so).
    let effective = if audiences.is_empty() {
        api_audiences
    } else {
        &audiences
    };
    if token::intersect(effective, requested).is_empty() {
        return Err(UpstreamError::BadResponse(format!(
            "it authenticates the token for audiences {effective:?}, none of which was asked for ({requested:?})"
        )));
    }
    let user = status.user.unwrap_or_default();
    if let Some((username, uid)) = &expect.identity {
        let got = user.username.as_deref().unwrap_or_default();
        if got != username {
            return Err(UpstreamError::BadResponse(format!(
                "it names user {got:?}, but the token's claims name {username:?}"
            )));
        }
        if let Some(got_uid) = user.uid.as_deref()
            && !got_uid.is_empty()
            && got_uid != uid
        {
            return Err(UpstreamError::BadResponse(format!(
                "it names service-account UID {got_uid:?}, but the token's claims name {uid:?}"
            )));
        }
    }
    // `status.error` stays empty on a "yes": Vault, Istio and SPIRE take any text as failure.
    Ok(Verdict {
        authenticated: true,
        user: Some(User::from(user)),
        audiences: verdict::audiences(audiences),
        error: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{REMEMBER_REVOKED, Revoked};
    use k8s_openapi::api::authentication::v1::UserInfo;

    const NOW: u64 = 1_795_860_000;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            max_ttl: Duration::from_secs(120),
            negative_ttl: Duration::from_secs(10),
            legacy_ttl: Duration::from_secs(30),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn deps(v: &[&str]) -> Vec<Dependency> {
        v.iter().map(|d| crate::cache::tests::dep(d)).collect()
    }

    /// A "yes" of service account `apps/web` bound to pod `p`, kept 600 s from `now`.
    fn bound_yes(now: SystemTime) -> Fetched {
        let user = UserInfo {
            username: Some("system:serviceaccount:apps:web".into()),
            uid: Some("s".into()),
            ..UserInfo::default()
        };
        let verdict = Verdict {
            authenticated: true,
            user: Some(User::from(user)),
            ..Verdict::default()
        };
        let mut f = Fetched::new(
            Arc::new(verdict),
            now + Duration::from_secs(600),
            Duration::from_secs(600),
        );
        f.depends_on = deps(&["serviceaccount:s", "pod:p"]);
        f
    }

    #[test]
    fn a_yes_is_held_to_what_the_watch_saw_deleted_in_the_api_servers_words() {
        let cache = VerdictCache::new(&config::Cache {
            max_entries: 10,
            negative_max_entries: 10,
            negative_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(120),
        });
        let now = at(NOW);
        let hold = |legacy: bool, now: SystemTime| {
            hold_to_revocations(&cache, bound_yes(now), legacy, now)
        };
        assert_eq!(hold(false, now).ttl.as_secs(), 600);

        // Being deleted since 30 s ago: valid 30 s more, and kept no longer; a legacy
        // token, not at all.
        let terminating = Revoked {
            deleting_since: Some(now - Duration::from_secs(30)),
            ..Revoked::default()
        };
        assert!(cache.remember_revoked(&crate::cache::tests::dep("pod:p"), terminating, now));
        let held = hold(false, now);
        assert!(held.verdict.authenticated);
        assert_eq!(held.expires_at, now + Duration::from_secs(30));
        assert_eq!(held.ttl, Duration::from_secs(30));
        assert!(!hold(true, now).verdict.authenticated);
        // Past that point the yes is the API server's no, and not kept.
        let later = now + Duration::from_secs(30);
        let held = hold(false, later);
        assert!(!held.verdict.authenticated);
        assert_eq!(held.ttl, Duration::ZERO);
        assert_eq!(
            held.verdict.error,
            "[invalid bearer token, service account token has been invalidated]"
        );

        // The service account gone: its own words, whichever came first wins.
        let gone = Revoked {
            gone_at: Some(now),
            ..Revoked::default()
        };
        assert!(cache.remember_revoked(&crate::cache::tests::dep("serviceaccount:s"), gone, now));
        assert_eq!(
            hold(false, now).verdict.error,
            r#"[invalid bearer token, serviceaccounts "web" not found]"#
        );
        // Nothing new: nothing to evict; after REMEMBER_REVOKED it is forgotten.
        assert!(!cache.remember_revoked(&crate::cache::tests::dep("serviceaccount:s"), gone, now));
        let much_later = now + REMEMBER_REVOKED + Duration::from_secs(1);
        assert!(cache.remember_revoked(&crate::cache::tests::dep("pod:other"), gone, much_later));
        assert!(
            cache
                .revoked(&deps(&["serviceaccount:s", "pod:p"]))
                .is_empty()
        );
    }

    #[test]
    fn positive_verdicts_live_until_exp_capped_by_max_ttl() {
        let exp = (NOW + 3600) as i64;
        assert_eq!(
            lifetime(true, Some(exp), false, at(NOW), lifetimes()),
            Duration::from_secs(120)
        );
        assert_eq!(
            lifetime(true, Some(exp), false, at(NOW + 3590), lifetimes()),
            Duration::from_secs(10)
        );
        // Accepted by the API server inside its leeway after exp: not cached at all.
        assert_eq!(
            lifetime(true, Some(exp), false, at(NOW + 3630), lifetimes()),
            Duration::ZERO
        );
        assert_eq!(
            lifetime(true, Some(-5), false, at(NOW), lifetimes()),
            Duration::ZERO
        );
        assert_eq!(
            lifetime(true, Some(i64::MAX), false, at(NOW), lifetimes()),
            Duration::from_secs(120)
        );
        assert_eq!(
            lifetime(true, None, false, at(NOW), lifetimes()),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn legacy_and_negative_verdicts_have_their_own_lifetimes() {
        assert_eq!(
            lifetime(true, None, true, at(NOW), lifetimes()),
            Duration::from_secs(30)
        );
        assert_eq!(
            lifetime(
                false,
                Some((NOW + 3600) as i64),
                false,
                at(NOW),
                lifetimes()
            ),
            Duration::from_secs(10)
        );
    }

    fn yes(username: &str, uid: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(s(audiences)),
            user: Some(UserInfo {
                username: Some(username.into()),
                uid: Some(uid.into()),
                ..UserInfo::default()
            }),
            error: Some("ignored".into()),
        }
    }

    fn sa_expectation() -> Expectation {
        Expectation {
            identity: Some(("system:serviceaccount:apps:web".into(), "sa-1".into())),
            expires_at: None,
            legacy: false,
            token: None,
            verified: false,
        }
    }

    #[test]
    fn an_upstream_yes_for_the_right_account_and_audience_is_believed_without_error_text() {
        let v = judge(
            yes("system:serviceaccount:apps:web", "sa-1", &["vault"]),
            &sa_expectation(),
            &s(&["vault"]),
            &[],
        )
        .unwrap();
        assert!(v.authenticated);
        assert!(v.error.is_empty());
        assert_eq!(&*v.audiences, s(&["vault"]));
    }

    #[test]
    fn an_upstream_yes_for_other_audiences_or_another_account_is_refused() {
        let e = sa_expectation();
        assert!(
            judge(
                yes("system:serviceaccount:apps:web", "sa-1", &["api"]),
                &e,
                &s(&["vault"]),
                &[]
            )
            .is_err()
        );
        assert!(
            judge(
                yes("system:serviceaccount:apps:other", "sa-1", &["vault"]),
                &e,
                &s(&["vault"]),
                &[]
            )
            .is_err()
        );
        assert!(
            judge(
                yes("system:serviceaccount:apps:web", "sa-2", &["vault"]),
                &e,
                &s(&["vault"]),
                &[]
            )
            .is_err()
        );
        // No audiences in the answer: the API server's own, which were not asked for here.
        assert!(
            judge(
                yes("system:serviceaccount:apps:web", "sa-1", &[]),
                &e,
                &s(&["vault"]),
                &s(&["https://k"])
            )
            .is_err()
        );
        assert!(
            judge(
                yes("system:serviceaccount:apps:web", "sa-1", &[]),
                &e,
                &s(&["https://k"]),
                &s(&["https://k"])
            )
            .is_ok()
        );
    }

    #[test]
    fn an_upstream_no_keeps_its_reason_or_gets_one() {
        let no = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("pods \"web-0\" not found".into()),
            ..Default::default()
        };
        assert_eq!(
            judge(no, &sa_expectation(), &s(&["vault"]), &[])
                .unwrap()
                .error,
            "pods \"web-0\" not found"
        );
        let silent = TokenReviewStatus::default();
        assert_eq!(
            judge(silent, &sa_expectation(), &s(&["vault"]), &[])
                .unwrap()
                .error,
            "the API server did not authenticate the token"
        );
    }
}
