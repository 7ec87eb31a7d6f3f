//! What the handlers share, and how a reload changes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::access::CallerAccess;
use crate::config::{AuthPolicy, Config};
use crate::review::Reviewer;
use crate::revocation::Watch;

/// What the handlers share.
pub struct AppState {
    /// The decision pipeline.
    pub reviewer: Arc<Reviewer>,
    access: RwLock<Arc<CallerAccess>>,
    auth: RwLock<Arc<AuthPolicy>>,
    config: RwLock<Arc<Config>>,
    draining: AtomicBool,
    /// The revocation watch, when it runs.
    pub revocation: Option<Arc<Watch>>,
}

impl AppState {
    pub(crate) fn new(
        config: &Config,
        reviewer: Arc<Reviewer>,
        revocation: Option<Arc<Watch>>,
    ) -> AppState {
        let access = CallerAccess::new(config.access.clone(), Arc::clone(reviewer.upstream()));
        AppState {
            reviewer,
            access: RwLock::new(Arc::new(access)),
            auth: RwLock::new(Arc::new(config.auth.clone())),
            config: RwLock::new(Arc::new(config.clone())),
            draining: AtomicBool::new(false),
            revocation,
        }
    }

    /// Who may call the TokenReview endpoints.
    pub(crate) fn access(&self) -> Arc<CallerAccess> {
        Arc::clone(&self.access.read().expect("access lock"))
    }

    /// Who `/auth` lets through.
    pub(crate) fn auth(&self) -> Arc<AuthPolicy> {
        Arc::clone(&self.auth.read().expect("auth lock"))
    }

    /// From now on `/readyz` answers 503: the gate is shutting down.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the gate is shutting down (`/readyz` answers 503).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Takes what can change without a restart from `new`; returns one line per change,
    /// including the changes that need a restart to take effect (which are not taken).
    pub fn reconfigure(&self, new: Config) -> Vec<String> {
        let mut notes = Vec::new();
        let old = Arc::clone(&self.config.read().expect("config lock"));
        if self.reviewer.reconfigure(&new) {
            notes.push("policy or verdict lifetimes changed: cached verdicts dropped".into());
        }
        if new.access != old.access {
            let access =
                CallerAccess::new(new.access.clone(), Arc::clone(self.reviewer.upstream()));
            *self.access.write().expect("access lock") = Arc::new(access);
            notes.push("access changed".into());
        }
        if new.auth != old.auth {
            *self.auth.write().expect("auth lock") = Arc::new(new.auth.clone());
            notes.push("auth allow-list changed".into());
        }
        for (key, changed) in [
            ("listen", new.listen != old.listen),
            ("upstream", new.upstream != old.upstream),
            ("tls", new.tls != old.tls),
            (
                "cache.max_entries / cache.negative_max_entries",
                (new.cache.max_entries, new.cache.negative_max_entries)
                    != (old.cache.max_entries, old.cache.negative_max_entries),
            ),
            (
                "shutdown_delay / shutdown_grace",
                new.shutdown != old.shutdown,
            ),
        ] {
            if changed {
                notes.push(format!("{key} changed: takes effect at the next restart"));
            }
        }
        *self.config.write().expect("config lock") = Arc::new(new);
        notes
    }
}
