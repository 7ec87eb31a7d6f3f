//! The revocation watch against the real API server's watch. The API server keeps a
//! successful authentication for 10 s, so right after a deletion it still says "yes" to
//! a token it has just accepted; tokengate must say "no" from the moment its watch sees
//! the deletion, and never cache that stale "yes".

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokengate::cache::{Dependency, Uid};

use super::*;
use crate::support::{TestClock, authenticated, error, eventually};

const WATCH: [(&str, &str); 1] = [("TOKENGATE_REVOCATION_WATCH", "true")];

/// `status.authenticated` of the API server's own answer (absent when false).
fn said_yes(review: &Value) -> bool {
    review["status"]["authenticated"].as_bool().unwrap_or(false)
}

/// Reviews `token` until `gate` refuses it (bounded by `within`); how long that took.
async fn until_refused(gate: &RealGate, token: &str, within: Duration) -> Duration {
    eventually(within, "the gate refuses the token", async || {
        !authenticated(&gate.review(token, &["vault"]).await.1)
    })
    .await
}

/// Creates service account `ns/web` and its pod `web-0` on `gate`'s control plane, and a
/// token bound to the pod that `gate` has accepted (and so cached).
async fn accepted_pod_token(gate: &RealGate, ns: &str) -> String {
    let plane = gate.plane;
    plane.service_account(ns, "web").await;
    let pod = plane.pod(ns, "web-0", "web").await;
    let token = plane
        .token(ns, "web", &["vault"], Some(("web-0", &pod)), 3600)
        .await;
    let (_, review) = gate.review(&token, &["vault"]).await;
    assert!(authenticated(&review), "{review}");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pods_token_is_refused_while_the_api_server_still_says_yes_from_its_cache() {
    let gate = real_gate(&WATCH).await;
    let plane = gate.plane;
    let token = accepted_pod_token(&gate, "revoke-pod").await;

    plane.delete_pod("revoke-pod", "web-0").await;
    let deleted = Instant::now();
    let gate_said_no = until_refused(&gate, &token, Duration::from_secs(5)).await;
    // The condition the gate must not be fooled by: the API server's cached "yes".
    let direct = plane.review(&token, &["vault"]).await;
    assert!(
        said_yes(&direct),
        "the API server keeps answering yes from its cache right after the deletion: {direct}"
    );
    let (_, review) = gate.review(&token, &["vault"]).await;
    assert!(!authenticated(&review), "{review}");

    // Until the API server itself says no, every answer of the gate stays "no"; then both
    // say it in the same words.
    let mut gate_answer = String::new();
    eventually(
        Duration::from_secs(20),
        "the API server refuses the token",
        async || {
            let (_, review) = gate.review(&token, &["vault"]).await;
            assert!(!authenticated(&review), "the gate said yes again: {review}");
            gate_answer = error(&review);
            !said_yes(&plane.review(&token, &["vault"]).await)
        },
    )
    .await;
    let api_said_no = deleted.elapsed();
    let direct = plane.review(&token, &["vault"]).await;
    assert_eq!(
        gate_answer,
        direct["status"]["error"].as_str().unwrap(),
        "{direct}"
    );
    assert_eq!(
        gate_answer,
        "[invalid bearer token, service account token has been invalidated]"
    );
    println!(
        "pod deleted: tokengate said no after {} ms, the API server after {} ms",
        gate_said_no.as_millis(),
        api_said_no.as_millis()
    );

    // A new pod of the same name is another object: its token is accepted.
    let pod = plane.pod("revoke-pod", "web-0", "web").await;
    let fresh = plane
        .token("revoke-pod", "web", &["vault"], Some(("web-0", &pod)), 3600)
        .await;
    assert!(authenticated(&gate.review(&fresh, &["vault"]).await.1));
    assert!(!authenticated(&gate.review(&token, &["vault"]).await.1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_recreated_service_accounts_old_token_is_never_accepted_again() {
    let gate = real_gate(&WATCH).await;
    let plane = gate.plane;
    plane.service_account("revoke-sa", "web").await;
    let token = plane
        .token("revoke-sa", "web", &["vault"], None, 3600)
        .await;
    assert!(authenticated(&gate.review(&token, &["vault"]).await.1));

    plane
        .kubectl(&["-n", "revoke-sa", "delete", "serviceaccount", "web"])
        .await;
    until_refused(&gate, &token, Duration::from_secs(5)).await;
    let (_, review) = gate.review(&token, &["vault"]).await;
    assert_eq!(
        error(&review),
        r#"[invalid bearer token, serviceaccounts "web" not found]"#
    );
    plane.service_account("revoke-sa", "web").await;
    let fresh = plane
        .token("revoke-sa", "web", &["vault"], None, 3600)
        .await;
    assert!(authenticated(&gate.review(&fresh, &["vault"]).await.1));
    assert!(!authenticated(&gate.review(&token, &["vault"]).await.1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pods_token_is_valid_until_its_deletion_timestamp_plus_the_leeway() {
    let clock = TestClock::new();
    let gate = ready(start_gate_with_clock(&WATCH, Arc::clone(&clock) as _).await).await;
    let plane = gate.plane;
    plane.service_account("terminating", "web").await;
    // Scheduled (to a node that does not exist), so a graceful delete leaves it
    // terminating: without a kubelet nothing ever finishes the deletion.
    let pod = plane
        .pod_on_node("terminating", "web-0", "web", Some("node-that-never-was"))
        .await;
    let token = plane
        .token(
            "terminating",
            "web",
            &["vault"],
            Some(("web-0", &pod)),
            3600,
        )
        .await;
    assert!(authenticated(&gate.review(&token, &["vault"]).await.1));
    plane
        .kubectl(&[
            "-n",
            "terminating",
            "delete",
            "pod",
            "web-0",
            "--grace-period=30",
            "--wait=false",
        ])
        .await;
    let deletion = plane.deletion_timestamp("terminating", "web-0").await;
    let cache = gate.state.reviewer.cache();
    let dependency = [Dependency::Pod(Uid::of(&pod))];
    eventually(
        Duration::from_secs(5),
        "the watch sees the deletion begin",
        async || !cache.revoked(&dependency).is_empty(),
    )
    .await;
    // The API server's own rule: valid until deletionTimestamp + 60 s, never earlier.
    let just_before = deletion + Duration::from_secs(59);
    clock.advance(
        just_before
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    );
    let (_, review) = gate.review(&token, &["vault"]).await;
    assert!(
        authenticated(&review),
        "still valid 59 s after the deletion timestamp: {review}"
    );
    clock.advance(Duration::from_secs(2));
    let (_, review) = gate.review(&token, &["vault"]).await;
    assert!(!authenticated(&review), "not valid 61 s after it: {review}");
    assert_eq!(
        error(&review),
        "[invalid bearer token, service account token has been invalidated]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_to_a_deleted_secret_is_refused_with_the_secret_watch_on() {
    // revocation.secrets needs list and watch on Secrets, which deploy/ leaves out on
    // purpose (they grant the contents): granted here as an operator would.
    let plane = control_plane().await;
    plane
        .kubectl(&[
            "create",
            "clusterrole",
            "tokengate-secrets-test",
            "--verb=list,watch",
            "--resource=secrets",
        ])
        .await;
    plane
        .kubectl(&[
            "create",
            "clusterrolebinding",
            "tokengate-secrets-test",
            "--clusterrole=tokengate-secrets-test",
            "--serviceaccount=tokengate:tokengate",
        ])
        .await;
    let gate = real_gate(&[WATCH[0], ("TOKENGATE_REVOCATION_SECRETS", "true")]).await;
    plane.service_account("revoke-secret", "web").await;
    plane
        .kubectl(&[
            "-n",
            "revoke-secret",
            "create",
            "secret",
            "generic",
            "bound",
            "--from-literal=k=v",
        ])
        .await;
    let uid = plane
        .kubectl(&[
            "-n",
            "revoke-secret",
            "get",
            "secret",
            "bound",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await;
    let token = plane
        .token_bound_to(
            "revoke-secret",
            "web",
            &["vault"],
            Some(("Secret", "bound", &uid)),
            3600,
        )
        .await;
    assert!(authenticated(&gate.review(&token, &["vault"]).await.1));

    plane
        .kubectl(&["-n", "revoke-secret", "delete", "secret", "bound"])
        .await;
    until_refused(&gate, &token, Duration::from_secs(5)).await;
    let (_, review) = gate.review(&token, &["vault"]).await;
    assert_eq!(
        error(&review),
        "[invalid bearer token, service account token has been invalidated]"
    );
    assert!(
        said_yes(&plane.review(&token, &["vault"]).await),
        "the API server still says yes from its cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_while_the_watch_is_cut_off_is_found_when_it_comes_back() {
    let plane = control_plane().await;
    let proxy = Proxy::start(plane.url.trim_start_matches("https://").to_owned()).await;
    let gate = real_gate(&[WATCH[0], ("TOKENGATE_UPSTREAM_URL", &proxy.url)]).await;
    let token = accepted_pod_token(&gate, "revoke-cut").await;

    proxy.pause();
    plane.delete_pod("revoke-cut", "web-0").await;
    proxy.resume();
    let back = Instant::now();
    until_refused(&gate, &token, Duration::from_secs(15)).await;
    println!(
        "watch cut off during the deletion: tokengate said no {} ms after the connection came back",
        back.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_hidden_by_a_410_gone_is_found_at_the_re_list() {
    // A control plane of its own: no watch cache, and etcd compacted every second, so a
    // watch that was away is told 410 Gone and must list again.
    let plane = own_control_plane(&["--watch-cache=false", "--etcd-compaction-interval=1s"]).await;
    let proxy = Proxy::start(plane.url.trim_start_matches("https://").to_owned()).await;
    let env = [WATCH[0], ("TOKENGATE_UPSTREAM_URL", proxy.url.as_str())];
    let clock = Arc::new(tokengate::review::SystemClock);
    let gate = ready(start_gate_on(plane, &env, clock).await).await;
    let token = accepted_pod_token(&gate, "revoke-gone").await;

    proxy.pause();
    let before = plane.pods_resource_version("revoke-gone").await;
    plane.delete_pod("revoke-gone", "web-0").await;
    eventually(
        Duration::from_secs(30),
        "etcd compacts the watch's version away",
        async || plane.pods_watch_is_gone("revoke-gone", &before).await,
    )
    .await;
    proxy.resume();
    let back = Instant::now();
    until_refused(&gate, &token, Duration::from_secs(15)).await;
    println!(
        "410 Gone after the deletion: tokengate said no {} ms after the connection came back",
        back.elapsed().as_millis()
    );
}
