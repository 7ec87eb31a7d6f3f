//! The revocation watch against the sim's list+watch: a deleted pod or service account
//! revokes cached verdicts at once, across watch cuts and re-lists; without the
//! permission the gate runs on with the max_ttl cap.

use std::time::{Duration, Instant};

use http::Method;
use tokengate_sim::MintRequest;

use crate::support::*;

const WATCH: [(&str, &str); 1] = [("TOKENGATE_REVOCATION_WATCH", "true")];

/// Waits (bounded) until the gate's revocation watch is healthy.
async fn watch_healthy(gate: &TestGate) {
    eventually(
        Duration::from_secs(10),
        "the revocation watch becomes healthy",
        async || gate.state.reviewer.cache().is_watch_healthy(),
    )
    .await;
}

/// A gate with the revocation watch on, once the watch is healthy.
async fn watched_gate() -> TestGate {
    let gate = spawn_gate(&WATCH).await;
    watch_healthy(&gate).await;
    gate
}

/// A token of pod `apps/web-0`, reviewed once, so its verdict is cached.
async fn cached_token(gate: &TestGate) -> String {
    let token = gate.workload_token("apps", "web", &["vault"]);
    assert!(authenticated(&gate.review(&token, None).await.1));
    token
}

/// Reviews `token` until the gate answers "no" (bounded by `within`); returns how long
/// that took from `since`.
async fn until_denied(gate: &TestGate, token: &str, since: Instant, within: Duration) -> Duration {
    until_refused(
        async || !authenticated(&gate.review(token, None).await.1),
        since,
        within,
    )
    .await
}

/// Asks `refused` until it says yes (bounded by `within` from `since`, the delete);
/// returns how long that took from `since`.
async fn until_refused(
    refused: impl AsyncFnMut() -> bool,
    since: Instant,
    within: Duration,
) -> Duration {
    let left = within.saturating_sub(since.elapsed());
    let what = format!("refused within {within:?} of the delete");
    eventually(left, &what, refused).await;
    since.elapsed()
}

#[tokio::test]
async fn a_deleted_pods_token_is_denied_within_a_second_measured_over_twenty_pods() {
    let gate = watched_gate().await;
    let mut latencies = Vec::new();
    for i in 0..20 {
        let token = gate.workload_token("apps", &format!("web-{i}"), &["vault"]);
        assert!(authenticated(&gate.review(&token, None).await.1));
        let before = gate.upstream_calls();
        assert!(authenticated(&gate.review(&token, None).await.1));
        assert_eq!(gate.upstream_calls(), before, "cached");
        let deleted = Instant::now();
        assert!(gate.sim.delete_pod("apps", &format!("web-{i}-0")));
        latencies.push(until_denied(&gate, &token, deleted, Duration::from_secs(1)).await);
    }
    latencies.sort();
    println!(
        "revocation latency over {} pods: p50 {:?}, p90 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 9 / 10],
        latencies[latencies.len() - 1]
    );
    let (_, _, metrics) = gate.call(Method::GET, "/metrics", None).await;
    assert!(
        metrics.contains("tokengate_revocation_watch_healthy 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tokengate_revocation_evictions_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_recreated_service_account_revokes_the_old_tokens() {
    let gate = watched_gate().await;
    let token = cached_token(&gate).await;
    let deleted = Instant::now();
    assert!(gate.sim.delete_service_account("apps", "web"));
    gate.sim.create_service_account("apps", "web");
    until_denied(&gate, &token, deleted, Duration::from_secs(1)).await;
}

/// A kept-alive connection remembers that its caller was admitted; the deletion of the
/// caller's service account ends that at once, as it ends the cached verdict.
#[tokio::test]
async fn a_deleted_callers_kept_alive_connection_is_refused() {
    // A caller of its own (Vault's service account, say): the gate's reviewer credential
    // must outlive the test.
    let gate = spawn_gate(&[
        WATCH[0],
        (
            "TOKENGATE_ACCESS_REVIEW_CALLERS",
            r#"["system:serviceaccount:tokengate:tokengate-reviewer", "system:serviceaccount:vault:vault"]"#,
        ),
    ])
    .await;
    watch_healthy(&gate).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let caller = gate.workload_token("vault", "vault", &[gate.sim.issuer()]);
    let mut connection = KeptAlive::open(&gate).await;
    for _ in 0..3 {
        let (status, answer) = connection.review_as(&caller, &token).await;
        assert_eq!(status, http::StatusCode::CREATED, "{answer}");
    }
    let deleted = Instant::now();
    assert!(gate.sim.delete_service_account("vault", "vault"));
    let refused = async || {
        let (status, answer) = connection.review_as(&caller, &token).await;
        if status != http::StatusCode::UNAUTHORIZED {
            assert_eq!(status, http::StatusCode::CREATED, "{answer}");
        }
        status == http::StatusCode::UNAUTHORIZED
    };
    until_refused(refused, deleted, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn with_the_watch_healthy_a_verdict_outlives_max_ttl() {
    let clock = TestClock::new();
    let env = [
        ("TOKENGATE_REVOCATION_WATCH", "true"),
        ("TOKENGATE_CACHE_MAX_TTL", "2m"),
    ];
    let gate = spawn_gate_with_clock(&env, clock.clone()).await;
    watch_healthy(&gate).await;
    let token = cached_token(&gate).await;
    clock.advance(Duration::from_secs(600));
    gate.authenticate_reviewer().await;
    let before = gate.upstream_calls();
    assert!(authenticated(&gate.review(&token, None).await.1));
    assert_eq!(
        gate.upstream_calls(),
        before,
        "kept past max_ttl: the watch would have revoked it"
    );
    // (Should the watch fail, max_ttl is in force again: cache::tests cover the fallback.)
}

#[tokio::test]
async fn a_deletion_during_a_watch_cut_is_not_missed() {
    let gate = watched_gate().await;
    let token = cached_token(&gate).await;
    gate.sim.cut_watches();
    let deleted = Instant::now();
    assert!(gate.sim.delete_pod("apps", "web-0"));
    until_denied(&gate, &token, deleted, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_deletion_hidden_by_a_410_is_found_at_the_re_list() {
    let gate = watched_gate().await;
    let token = cached_token(&gate).await;
    // Take the watches down with 410 and delete while the log that would replay it is gone.
    gate.sim.expire_watches();
    let deleted = Instant::now();
    assert!(gate.sim.delete_pod("apps", "web-0"));
    gate.sim.expire_watches();
    until_denied(&gate, &token, deleted, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn of_many_cached_verdicts_exactly_those_of_deleted_pods_go() {
    let gate = watched_gate().await;
    const PODS: usize = 10_000;
    const DELETED: usize = 1_000;
    gate.sim.create_service_account("apps", "web");
    let mut tokens = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let pod = format!("web-{i}");
        gate.sim.create_pod("apps", &pod, "web");
        let token = gate
            .sim
            .mint(&MintRequest {
                namespace: "apps".into(),
                service_account: "web".into(),
                audiences: vec!["vault".into()],
                expiration_seconds: Some(3600),
                pod: Some(pod),
            })
            .unwrap();
        tokens.push(token);
    }
    let reviewer = &gate.state.reviewer;
    let vault = ["vault".to_string()];
    for token in &tokens {
        assert!(
            reviewer
                .review(token, &vault, reviewer.now())
                .await
                .unwrap()
                .verdict
                .authenticated
        );
    }
    let evictions_before = evictions(&gate).await;
    for i in (0..PODS).step_by(PODS / DELETED) {
        assert!(gate.sim.delete_pod("apps", &format!("web-{i}")));
    }
    // Every deletion has been applied once the counter says so (bounded).
    eventually(
        Duration::from_secs(10),
        "every deletion is applied",
        async || evictions(&gate).await >= evictions_before + DELETED as u64,
    )
    .await;
    let before = gate.upstream_calls();
    for (i, token) in tokens.iter().enumerate() {
        let decision = reviewer
            .review(token, &vault, reviewer.now())
            .await
            .unwrap();
        let deleted = i % (PODS / DELETED) == 0;
        assert_eq!(decision.verdict.authenticated, !deleted, "token {i}");
    }
    assert_eq!(
        gate.upstream_calls() - before,
        DELETED as u64,
        "only the revoked ones were asked again"
    );
    assert_eq!(
        evictions(&gate).await,
        evictions_before + DELETED as u64,
        "nothing else was evicted"
    );
}

async fn evictions(gate: &TestGate) -> u64 {
    let (_, _, text) = gate.call(Method::GET, "/metrics", None).await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tokengate_revocation_evictions_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn without_the_permission_the_gate_runs_on_with_the_cap_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    sim.deny_watch(true);
    let gate = spawn_gate_for(sim, dir, &WATCH).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    assert!(
        authenticated(&gate.review(&token, None).await.1),
        "reviews work all the same"
    );
    // The first list attempt has failed by now or soon (bounded); readiness holds
    // throughout.
    let mut body = String::new();
    eventually(
        Duration::from_secs(10),
        "readyz mentions the revocation watch",
        async || {
            let (status, _, text) = gate.call(Method::GET, "/readyz", None).await;
            assert_eq!(status, http::StatusCode::OK, "{text}");
            body = text;
            body.contains("revocation watch")
        },
    )
    .await;
    assert!(body.contains("capped at cache.max_ttl"), "{body}");
    assert!(!gate.state.reviewer.cache().is_watch_healthy());
}
