//! The revocation watch: evict cached verdicts the moment the object a token is bound
//! to is deleted.
//!
//! Responsible for: list+watch of Pods, ServiceAccounts and (with `revocation.secrets`)
//! Secrets through the API server (kube's metadata-only watcher: resumable, bookmarks,
//! re-list after `410 Gone`; only metadata crosses, so Secret contents never reach the
//! gate); on a deletion, or a `deletionTimestamp` set, evicting every verdict that
//! depends on the object's UID (pods, service accounts) or name (Secrets of legacy
//! tokens), and telling the cache from when its tokens are invalid: at once, or the API
//! server's leeway after the `deletionTimestamp` (`pkg/serviceaccount/claims.go`: a
//! terminating pod's token stays valid a while, a `preStop` hook may log in with it), so
//! that the next review is kept no longer than that and the "yes" the API server keeps
//! answering from its own cache for a while is not believed past it (see
//! `review::hold_to_revocations`); after every re-list evicting the verdicts whose object
//! did not come back (a deletion missed while the watch was down); and keeping the cache
//! told whether the watch is healthy. Healthy
//! means: every resource listed, and none disconnected for longer than
//! [`STALE_AFTER`] without a re-list. While it is not, verdicts are not served past
//! `max_ttl`.
//!
//! Not responsible for: what depends on what (the cache records it at insert).

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::cache::{Dependency, Revoked, Uid, VerdictCache};
use crate::config::{self, UpstreamSource};
use crate::metrics::Metrics;

/// How long a watch may be disconnected before verdicts fall back to the `max_ttl` cap
/// until it has re-listed.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(30);

/// The watched resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Pods,
    ServiceAccounts,
    Secrets,
}

impl Watched {
    const ALL: [Watched; 3] = [Watched::Pods, Watched::ServiceAccounts, Watched::Secrets];

    fn name(self) -> &'static str {
        match self {
            Watched::Pods => "pods",
            Watched::ServiceAccounts => "serviceaccounts",
            Watched::Secrets => "secrets",
        }
    }

    /// Whether `dependency` is an object of this resource.
    fn covers(self, dependency: &Dependency) -> bool {
        matches!(
            (self, dependency),
            (Watched::Pods, Dependency::Pod(_))
                | (Watched::ServiceAccounts, Dependency::ServiceAccount(_))
                | (Watched::Secrets, Dependency::Secret(_))
        )
    }

    /// The dependency an object of this resource stands for.
    fn dependency<K: Resource>(self, object: &PartialObjectMeta<K>) -> Option<Dependency> {
        let meta = &object.metadata;
        let uid = meta.uid.as_deref().map(Uid::of);
        match self {
            Watched::Pods => uid.map(Dependency::Pod),
            Watched::ServiceAccounts => uid.map(Dependency::ServiceAccount),
            Watched::Secrets => Some(Dependency::Secret(
                format!("{}/{}", meta.namespace.as_deref()?, meta.name.as_deref()?).into(),
            )),
        }
    }
}

/// Each watch's state, for the health verdict.
#[derive(Debug, Default, Clone, Copy)]
struct WatchState {
    listed: bool,
    broken_since: Option<Instant>,
    needs_relist: bool,
}

impl WatchState {
    fn healthy(&self, now: Instant) -> bool {
        self.listed && !self.needs_relist && self.broken_since.is_none_or(|t| now - t < STALE_AFTER)
    }
}

/// The running watch. Cheap to share.
pub struct Watch {
    cache: Arc<VerdictCache>,
    metrics: Arc<Metrics>,
    secrets: bool,
    states: Mutex<[WatchState; 3]>,
}

impl Watch {
    /// A watch that will evict from `cache`; Secrets are watched only when `secrets`.
    pub(crate) fn new(cache: Arc<VerdictCache>, metrics: Arc<Metrics>, secrets: bool) -> Watch {
        let mut states = [WatchState::default(); 3];
        if !secrets {
            // Not watched: never the reason the watch is unhealthy.
            states[2].listed = true;
        }
        Watch {
            cache,
            metrics,
            secrets,
            states: Mutex::new(states),
        }
    }

    /// Whether every resource is listed and being watched (see the module docs).
    pub(crate) fn is_healthy(&self) -> bool {
        let now = Instant::now();
        self.states().iter().all(|s| s.healthy(now))
    }

    /// Why the watch is not healthy, for `/readyz` detail.
    pub(crate) fn problem(&self) -> Option<String> {
        if self.is_healthy() {
            return None;
        }
        let now = Instant::now();
        let states = self.states();
        let lagging: Vec<&str> = Watched::ALL
            .iter()
            .zip(states.iter())
            .filter(|(_, s)| !s.healthy(now))
            .map(|(w, _)| w.name())
            .collect();
        // The watch's own error is in the log: callers of /readyz are told what it means.
        Some(format!(
            "revocation watch of {} not healthy: verdicts are capped at cache.max_ttl",
            lagging.join(", ")
        ))
    }

    fn states(&self) -> [WatchState; 3] {
        *self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, which: Watched, change: impl FnOnce(&mut WatchState)) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let i = Watched::ALL
            .iter()
            .position(|w| *w == which)
            .expect("a watched resource");
        change(&mut states[i]);
        drop(states);
        self.publish();
    }

    /// Tells the cache and the metrics the current health.
    fn publish(&self) {
        let healthy = self.is_healthy();
        self.cache.set_watch_healthy(healthy);
        self.metrics.revocation_watch_healthy(healthy);
    }

    /// `dependency` is gone: its verdicts go now, and a "yes" for it is not believed.
    fn gone(&self, dependency: &Dependency, why: &str) {
        let now = SystemTime::now();
        let seen = Revoked {
            gone_at: Some(now),
            ..Revoked::default()
        };
        self.cache.remember_revoked(dependency, seen, now);
        self.revoke(dependency, why);
    }

    /// `dependency` is being deleted since `deletion`. Its verdicts go now, so that the
    /// next review asks again and is held to the API server's rule for its token (valid
    /// a while longer, or not at all).
    fn being_deleted(&self, dependency: &Dependency, deletion: SystemTime) {
        let now = SystemTime::now();
        let seen = Revoked {
            deleting_since: Some(deletion),
            ..Revoked::default()
        };
        if self.cache.remember_revoked(dependency, seen, now) {
            self.revoke(dependency, "being deleted");
        }
    }

    fn revoke(&self, dependency: &Dependency, why: &str) {
        let evicted = self.cache.revoke(dependency);
        if evicted > 0 {
            self.metrics.revocation_evictions(evicted);
            tracing::info!(%dependency, evicted, why, "verdicts revoked");
        }
    }

    /// Runs the three watches until the task is aborted; `client` reaches the API server.
    pub(crate) async fn run(self: Arc<Self>, client: Client) {
        let pods = Api::<PartialObjectMeta<Pod>>::all(client.clone());
        let accounts = Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone());
        let secrets = self
            .secrets
            .then(|| Api::<PartialObjectMeta<Secret>>::all(client));
        // Health decays with time (a broken watch turns stale after STALE_AFTER), so it
        // is published on a tick as well as on every event.
        let tick = {
            let watch = Arc::clone(&self);
            async move {
                let mut interval = tokio::time::interval(Duration::from_secs(1));
                loop {
                    interval.tick().await;
                    watch.publish();
                }
            }
        };
        tokio::join!(
            Arc::clone(&self).follow(pods, Watched::Pods),
            Arc::clone(&self).follow(accounts, Watched::ServiceAccounts),
            async {
                match secrets {
                    Some(api) => Arc::clone(&self).follow(api, Watched::Secrets).await,
                    None => std::future::pending().await,
                }
            },
            tick,
        );
    }

    async fn follow<K>(self: Arc<Self>, api: Api<PartialObjectMeta<K>>, which: Watched)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        PartialObjectMeta<K>: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        // Metadata only: Secret contents never reach the gate.
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut listed: HashSet<Dependency> = HashSet::new();
        let mut reported = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => listed.clear(),
                Ok(Event::InitApply(object)) => {
                    if let Some(d) = which.dependency(&object) {
                        self.deleting(&object, &d);
                        listed.insert(d);
                    }
                }
                Ok(Event::InitDone) => {
                    // Whatever a verdict depends on that the list did not show was deleted
                    // while the watch was not looking.
                    for dependency in self.cache.dependencies(|d| which.covers(d)) {
                        if !listed.contains(&dependency) {
                            self.gone(&dependency, "gone at re-list");
                        }
                    }
                    listed.clear();
                    reported = false;
                    self.update(which, |s| {
                        *s = WatchState {
                            listed: true,
                            ..WatchState::default()
                        }
                    });
                    tracing::info!(resource = which.name(), "revocation watch listed");
                }
                Ok(Event::Apply(object)) => {
                    if let Some(d) = which.dependency(&object) {
                        self.deleting(&object, &d);
                    }
                    self.seen(which);
                }
                Ok(Event::Delete(object)) => {
                    if let Some(d) = which.dependency(&object) {
                        self.gone(&d, "deleted");
                    }
                    self.seen(which);
                }
                Err(e) => {
                    if !reported {
                        // Once per outage: the backoff retries quietly.
                        tracing::error!(resource = which.name(), error = %e, "revocation watch failed; verdicts are capped at cache.max_ttl until it recovers (it needs list and watch on pods, serviceaccounts and secrets)");
                        reported = true;
                    } else {
                        tracing::debug!(resource = which.name(), error = %e, "revocation watch still failing");
                    }
                    self.update(which, |s| {
                        s.broken_since.get_or_insert_with(Instant::now);
                    });
                }
            }
        }
    }

    /// Follows `object`'s `deletionTimestamp`, if it has one.
    fn deleting<K: Resource>(&self, object: &PartialObjectMeta<K>, dependency: &Dependency) {
        if let Some(time) = &object.metadata.deletion_timestamp {
            self.being_deleted(dependency, SystemTime::from(time.0));
        }
    }

    /// An event arrived: a short break is over; a long one still needs a re-list.
    fn seen(&self, which: Watched) {
        self.update(which, |s| {
            if let Some(since) = s.broken_since.take()
                && since.elapsed() >= STALE_AFTER
            {
                s.needs_relist = true;
            }
        });
    }
}

/// A kube client for the configured API server and reviewer credential.
pub(crate) async fn client(cfg: &config::Upstream) -> Result<Client, String> {
    let config = match &cfg.source {
        UpstreamSource::Direct {
            url,
            ca_file,
            token_file,
        } => {
            let uri = url.as_str().parse().map_err(|e| format!("{url}: {e}"))?;
            let mut config = kube::Config::new(uri);
            if let Some(path) = ca_file {
                let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let ders: Vec<Vec<u8>> = rustls_pemfile::certs(&mut &pem[..])
                    .filter_map(Result::ok)
                    .map(|c| c.to_vec())
                    .collect();
                config.root_cert = Some(ders);
            }
            config.auth_info.token_file = token_file.as_ref().map(|p| p.display().to_string());
            config.read_timeout = None;
            config
        }
        UpstreamSource::Kubeconfig { path, context } => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
            let options = kube::config::KubeConfigOptions {
                context: context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    Client::try_from(config).map_err(|e| e.to_string())
}
