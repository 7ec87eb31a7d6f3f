//! What every target does with a token once it has one: the gate's local pipeline
//! (`classify`, then `check` for the requested audiences), the rejection's message
//! rendered as it would be sent, and the invariants an accepted token must keep.

#![allow(dead_code, reason = "each target uses a part")]

use std::time::{Duration, UNIX_EPOCH};

use tokengate::token::{self, Classified, LEEWAY_SECONDS};

/// The sim's issuer, as `policy.issuers` and `policy.api_audiences` default to it.
pub const ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// 2026-11-28T10:00:00Z, the seeds' notion of now.
pub const NOW: i64 = 1_795_860_000;

pub fn issuers() -> Vec<String> {
    vec![ISS.to_string()]
}

/// Runs the local checks on `raw` for `requested` as the review pipeline does, at a few
/// instants (now, the epoch, far ahead), and asserts what an accepted token guarantees.
pub fn local_checks(raw: &str, requested: &[String]) {
    let issuers = issuers();
    let token = match token::classify(raw, &issuers) {
        Ok(Classified::ServiceAccount(t)) => t,
        Ok(Classified::Foreign(why)) => {
            assert!(!why.is_empty());
            return;
        }
        Err(rejection) => {
            assert!(!rejection.to_string().is_empty());
            return;
        }
    };
    // A legacy token's subject must name its service account (legacy.go); a projected
    // token's is ignored, as the API server ignores it.
    if token.kind == token::Kind::Legacy
        && let Some(sub) = &token.claims.subject
    {
        assert_eq!(*sub, token.username(), "a subject that is not its service account");
    }
    let instants = [
        UNIX_EPOCH + Duration::from_secs(NOW as u64),
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(1 << 40),
    ];
    for now in instants {
        match token::check(&token, requested, &issuers, now) {
            Ok(valid) => {
                let secs = token::unix_seconds(now);
                let c = &token.claims;
                assert!(!valid.is_empty());
                assert!(valid.iter().all(|a| requested.contains(a)));
                assert!(c.expires_at.is_none_or(|e| secs <= e + LEEWAY_SECONDS));
                assert!(c.not_before.is_none_or(|n| secs + LEEWAY_SECONDS >= n));
                assert!(c.issued_at.is_none_or(|i| secs + LEEWAY_SECONDS >= i));
            }
            Err(rejection) => assert!(!rejection.to_string().is_empty()),
        }
    }
}
