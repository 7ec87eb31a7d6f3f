//! Local signature checks against the sim's published keys: forged tokens die here,
//! key rotation is followed, and with `verify-offline` verified tokens are answered while
//! the API server is down.

use std::time::Duration;

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokengate_sim::Failure;

use crate::jwt::{b64, forge};
use crate::support::*;

/// Claims as the API server lays them out, for an existing service account, valid an
/// hour for `vault`.
fn claims(gate: &TestGate, ns: &str, name: &str, uid: &str) -> Value {
    let t = crate::jwt::now();
    crate::jwt::claims(gate.sim.issuer(), ns, name, uid, &["vault"], t, t + 3600)
}

#[tokio::test]
async fn forged_tokens_are_rejected_locally_and_cost_nothing_the_second_time() {
    let gate = spawn_gate(&[]).await;
    let uid = gate.sim.create_service_account("apps", "web");
    let kid = gate.sim.current_kid();
    let forged = forge(
        &json!({"alg": "ES256", "kid": kid}),
        &claims(&gate, "apps", "web", &uid),
    );
    let (calls, jwks) = (gate.upstream_calls(), gate.sim.jwks_served());
    for _ in 0..3 {
        let (status, review) = gate.review(&forged, None).await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(!authenticated(&review));
        assert_eq!(
            error(&review),
            "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]",
            "{review}"
        );
    }
    assert_eq!(
        gate.upstream_calls(),
        calls,
        "a forged token never reaches the API server"
    );
    assert_eq!(gate.sim.jwks_served(), jwks, "a known kid needs no refresh");
    let (_, _, metrics) = gate.call(http::Method::GET, "/metrics", None).await;
    assert!(
        metrics.contains(r#"tokengate_local_rejections_total{reason="signature"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn alg_none_and_hs256_with_the_public_key_never_pass() {
    let gate = spawn_gate(&[]).await;
    let uid = gate.sim.create_service_account("apps", "web");
    let kid = gate.sim.current_kid();
    let claims = claims(&gate, "apps", "web", &uid).to_string();
    let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims));
    // The classic confusion: HMAC keyed with public bytes the attacker can read. No
    // published key verifies HS*, so which public bytes does not matter.
    let hs256 = crate::jwt::sign(
        &EncodingKey::from_secret(gate.sim.ca_pem().as_bytes()).unwrap(),
        Algorithm::HS256,
        &format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#),
        &claims,
    );
    let calls = gate.upstream_calls();
    for (name, token) in [("none", none), ("HS256", hs256)] {
        let (_, review) = gate.review(&token, None).await;
        assert!(!authenticated(&review), "{name}");
        assert_eq!(
            error(&review),
            "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]",
            "{name}: {review}"
        );
    }
    assert_eq!(gate.upstream_calls(), calls);
}

#[tokio::test]
async fn an_unknown_kid_causes_one_refresh_then_a_rejection_however_many_arrive() {
    let gate = spawn_gate(&[]).await;
    let uid = gate.sim.create_service_account("apps", "web");
    let jwks = gate.sim.jwks_served();
    let calls = gate.upstream_calls();
    let flood = (0..20).map(|i| {
        let forged = forge(
            &json!({"alg": "ES256", "kid": format!("random-{i}")}),
            &claims(&gate, "apps", "web", &uid),
        );
        let gate = &gate;
        async move { gate.review(&forged, None).await.1 }
    });
    for review in futures::future::join_all(flood).await {
        assert!(!authenticated(&review));
        assert_eq!(
            error(&review),
            "[invalid bearer token, invalid signature, no keys found]",
            "{review}"
        );
    }
    assert_eq!(
        gate.sim.jwks_served() - jwks,
        1,
        "one refresh for the whole flood"
    );
    assert_eq!(gate.upstream_calls(), calls);
}

#[tokio::test]
async fn a_key_published_right_after_a_flood_of_unknown_kids_verifies_at_once() {
    let gate = spawn_gate(&[]).await;
    let uid = gate.sim.create_service_account("apps", "web");
    gate.sim.create_pod("apps", "web-0", "web");
    // The flood spends the refresh an unknown kid may cause.
    let forged = forge(
        &json!({"alg": "ES256", "kid": "random"}),
        &claims(&gate, "apps", "web", &uid),
    );
    let jwks = gate.sim.jwks_served();
    assert!(!authenticated(&gate.review(&forged, None).await.1));
    assert_eq!(gate.sim.jwks_served() - jwks, 1);
    // Then the API server publishes a new key and signs with it.
    let kid = gate.sim.rotate_keys().unwrap();
    let genuine = gate.mint("apps", "web", &["vault"], Some("web-0"));
    let started = std::time::Instant::now();
    let (_, review) = gate.review(&genuine, None).await;
    assert!(
        authenticated(&review),
        "a token of the new key {kid}: {review}"
    );
    assert!(
        started.elapsed() <= tokengate::keys::UNKNOWN_KID_REFRESH_INTERVAL + Duration::from_secs(1),
        "accepted after {:?}",
        started.elapsed()
    );
    assert_eq!(gate.sim.jwks_served() - jwks, 2, "one more refresh");
}

#[tokio::test]
async fn an_unknown_kid_is_forwarded_when_configured() {
    let gate = spawn_gate(&[("TOKENGATE_VERIFY_UNKNOWN_KID", "forward")]).await;
    let uid = gate.sim.create_service_account("apps", "web");
    let forged = forge(
        &json!({"alg": "ES256", "kid": "external-signer"}),
        &claims(&gate, "apps", "web", &uid),
    );
    let calls = gate.upstream_calls();
    let (_, review) = gate.review(&forged, None).await;
    assert!(
        !authenticated(&review),
        "the API server refuses it: {review}"
    );
    assert_eq!(gate.upstream_calls() - calls, 1);
}

#[tokio::test]
async fn tokens_of_a_rotated_key_verify_after_one_refresh_and_old_ones_still_do() {
    let gate = spawn_gate(&[]).await;
    let old = gate.workload_token("apps", "web", &["vault"]);
    let new_kid = gate.sim.rotate_keys().unwrap();
    let new = gate.mint("apps", "web", &["vault"], Some("web-0"));
    assert!(new.starts_with(&b64(format!(r#"{{"alg":"ES256","kid":"{new_kid}"}}"#))));
    let jwks = gate.sim.jwks_served();
    let (_, review) = gate.review(&new, None).await;
    assert!(authenticated(&review), "{review}");
    assert_eq!(gate.sim.jwks_served() - jwks, 1);
    let (_, review) = gate.review(&old, None).await;
    assert!(authenticated(&review), "{review}");
}

#[tokio::test]
async fn with_discovery_down_at_start_the_gate_is_not_ready_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    sim.set_discovery_available(false);
    let text = tokengate::cli::dev_config(
        "127.0.0.1:0".parse().unwrap(),
        &sim.url(),
        dir.path(),
        sim.issuer(),
    );
    let config = tokengate::config::from_str(&text, std::iter::empty()).unwrap();
    let gate = tokengate::build(&config).await.unwrap();
    let state = gate.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tokengate::run(listener, gate, async move {
        let _ = stopped.await;
    }));
    state.reviewer.upstream().wait_ready().await;
    let keys = state.reviewer.keys().unwrap().clone();
    // The first load has been tried and failed.
    eventually(
        Duration::from_secs(10),
        "the first load of the keys fails",
        async || keys.last_error().is_some(),
    )
    .await;
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // What is wrong, for the probe; why (discovery's own 503) is the operator's.
    assert_eq!(
        body,
        "not ready: the service-account issuer's keys are not loaded\n"
    );
    let why = keys.last_error().unwrap();
    assert!(why.contains("503"), "{why}");
    sim.set_discovery_available(true);
    tokio::time::timeout(Duration::from_secs(10), keys.wait_loaded())
        .await
        .expect("keys load once discovery is back");
    assert_eq!(get(&format!("{url}/readyz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn verify_offline_answers_verified_tokens_while_the_api_server_is_down_and_stops_when_it_is_back()
 {
    let clock = TestClock::new();
    let gate = spawn_gate_with_clock(
        &[
            ("TOKENGATE_POLICY_ON_UPSTREAM_UNAVAILABLE", "verify-offline"),
            ("TOKENGATE_UPSTREAM_TIMEOUT", "1s"),
        ],
        clock.clone(),
    )
    .await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let uid = gate.sim.create_service_account("apps", "other");
    let forged = forge(
        &json!({"alg": "ES256", "kid": gate.sim.current_kid()}),
        &claims(&gate, "apps", "other", &uid),
    );
    gate.sim.fail_next(1000, Failure::Status(503));

    let (status, review) = gate.review(&token, None).await;
    assert_eq!(status, StatusCode::CREATED, "{review}");
    assert!(authenticated(&review), "{review}");
    let user = &review["status"]["user"];
    assert_eq!(user["username"], "system:serviceaccount:apps:web");
    assert_eq!(
        user["extra"]["tokengate.io/decided-offline"],
        json!(["true"])
    );
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["web-0"])
    );
    let (_, review) = gate.review(&forged, None).await;
    assert!(
        !authenticated(&review),
        "a forged token is no better offline"
    );
    let (_, _, metrics) = gate.call(http::Method::GET, "/metrics", None).await;
    assert!(
        metrics.contains(r#"tokengate_decisions_total{source="offline"} 1"#),
        "{metrics}"
    );

    // The API server is back; once the offline verdict's short life is over, it decides again.
    gate.sim.fail_next(0, Failure::Status(503));
    clock.advance(Duration::from_secs(11));
    gate.authenticate_reviewer().await;
    let (_, review) = gate.review(&token, None).await;
    assert!(authenticated(&review));
    assert!(
        review["status"]["user"]["extra"]
            .get("tokengate.io/decided-offline")
            .is_none(),
        "{review}"
    );
}
