//! Who may call the TokenReview endpoints, once the caller's own token is authenticated.
//!
//! Responsible for: the allow-list (`access.review_callers`) or, with
//! `access.mode = "subjectaccessreview"`, the API server's own answer to "may this user
//! create tokenreviews in authentication.k8s.io?" (the permission the API server itself
//! demands of a TokenReview caller), each definitive answer kept `access.sar_ttl`.
//!
//! Not responsible for: authenticating the caller (see `review::Reviewer::authenticate_caller`).

use std::sync::Arc;

use crate::config::{Access, AccessMode};
use crate::upstream::{Upstream, UpstreamError};
use crate::verdict::User;

/// Callers kept in the SubjectAccessReview answer cache at most.
const MAX_CACHED_CALLERS: u64 = 10_000;

/// Decides whether an authenticated caller may review tokens.
pub(crate) struct CallerAccess {
    access: Access,
    upstream: Arc<Upstream>,
    /// Definitive SubjectAccessReview answers by caller identity, each kept `sar_ttl`.
    answers: moka::sync::Cache<String, Result<(), String>>,
}

impl CallerAccess {
    /// Access control as configured, asking `upstream` in SubjectAccessReview mode.
    pub(crate) fn new(access: Access, upstream: Arc<Upstream>) -> CallerAccess {
        let answers = moka::sync::Cache::builder()
            .max_capacity(MAX_CACHED_CALLERS)
            .time_to_live(access.sar_ttl)
            .build();
        CallerAccess {
            access,
            upstream,
            answers,
        }
    }

    /// `Ok(Ok(()))`: allowed; `Ok(Err(reason))`: refused; `Err`: cannot tell now.
    pub(crate) async fn check(&self, user: &User) -> Result<Result<(), String>, UpstreamError> {
        match self.access.mode {
            AccessMode::AllowList => Ok(if self.access.allows(user.username(), user.groups()) {
                Ok(())
            } else {
                Err("not in access.review_callers".into())
            }),
            // Boxed: the API-server call's future is large, and would otherwise be copied
            // with every request's, allow-list mode included.
            AccessMode::SubjectAccessReview => Box::pin(self.ask(user)).await,
        }
    }

    async fn ask(&self, user: &User) -> Result<Result<(), String>, UpstreamError> {
        // Identities are not secrets; the whole identity is the key, as RBAC may grant by
        // any part of it.
        let key = serde_json::to_string(user).expect("a UserInfo serialises");
        if let Some(answer) = self.answers.get(&key) {
            return Ok(answer);
        }
        let answer = self
            .upstream
            .may_review_tokens(&user.to_user_info())
            .await?;
        self.answers.insert(key, answer.clone());
        Ok(answer)
    }
}
