//! The gate in front of the sim: the review pipeline end to end.

use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use serde_json::json;
use tokengate_sim::Failure;

use crate::jwt::{now, unsigned};
use crate::support::*;

#[tokio::test]
async fn valid_token_is_authenticated_with_the_identity_the_api_server_gives() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let (status, review) = gate.review(&token, None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(review["kind"], "TokenReview");
    assert_eq!(review["spec"]["token"], token, "spec is echoed");
    assert!(authenticated(&review), "{review}");
    let user = &review["status"]["user"];
    assert_eq!(user["username"], "system:serviceaccount:apps:web");
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ])
    );
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["web-0"])
    );
    assert!(
        user["extra"]["authentication.kubernetes.io/credential-id"][0]
            .as_str()
            .unwrap()
            .starts_with("JTI=")
    );
    assert_eq!(review["status"]["audiences"], json!(["vault"]));
    assert!(
        review["status"].get("error").is_none(),
        "no error text on a yes: {review}"
    );
}

#[tokio::test]
async fn repeated_token_costs_one_upstream_call() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let before = gate.upstream_calls();
    for _ in 0..20 {
        let (_, review) = gate.review(&token, None).await;
        assert!(authenticated(&review));
    }
    assert_eq!(gate.upstream_calls() - before, 1);
}

#[tokio::test]
async fn hopeless_tokens_are_rejected_locally_without_calling_the_api_server() {
    let gate = spawn_gate(&[]).await;
    let uid = gate.sim.create_service_account("apps", "web");
    let t = now();
    let other_issuer = {
        let iss = gate.sim.issuer();
        let mut c = crate::jwt::claims(iss, "apps", "web", &uid, &["vault"], t - 10, t + 3600);
        c["iss"] = json!("https://evil.example");
        gate.sim.sign_claims(&c)
    };
    let legacy = gate.sim.legacy_token("apps", "web");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            gate.signed_token("apps", "web", &uid, &["vault"], t - 7200, t - 3600),
            "[invalid bearer token, service account token has expired]",
        ),
        (
            "not yet valid",
            gate.signed_token("apps", "web", &uid, &["vault"], t + 600, t + 3600),
            "[invalid bearer token, service account token is not valid yet]",
        ),
        ("other issuer", other_issuer, "invalid bearer token"),
        (
            "wrong audience",
            gate.mint("apps", "web", &["api"], None),
            r#"[invalid bearer token, token audiences ["api"] is invalid for the target audiences ["vault"]]"#,
        ),
        ("not a JWT", "not-a-jwt".into(), "invalid bearer token"),
        (
            "duplicate claim",
            unsigned(
                r#"{"alg":"ES256"}"#,
                format!(
                    r#"{{"iss":"{}","exp":1,"exp":{}}}"#,
                    gate.sim.issuer(),
                    t + 60
                ),
            ),
            "[invalid bearer token, json: duplicate key 'exp' in object]",
        ),
        (
            "legacy",
            legacy,
            "legacy service account token for system:serviceaccount:apps:web is not accepted",
        ),
    ];
    let before = gate.upstream_calls();
    for (name, token, reason) in &cases {
        let (status, review) = gate.review(token, None).await;
        assert_eq!(status, StatusCode::CREATED, "{name}");
        assert!(!authenticated(&review), "{name}: {review}");
        assert!(
            error(&review).contains(reason),
            "{name}: {} does not contain {reason:?}",
            error(&review)
        );
    }
    assert_eq!(
        gate.upstream_calls(),
        before,
        "no case reached the API server"
    );
}

#[tokio::test]
async fn an_expired_token_is_rejected_from_the_cache_again_but_a_not_yet_valid_one_is_checked_afresh()
 {
    let gate = spawn_gate(&[]).await;
    let uid = gate.sim.create_service_account("apps", "web");
    let t = now();
    let signed = |from: i64, to: i64| gate.signed_token("apps", "web", &uid, &["vault"], from, to);
    let (expired, not_yet) = (signed(t - 7200, t - 3600), signed(t + 600, t + 3600));
    for _ in 0..3 {
        for (token, reason) in [(&expired, "has expired"), (&not_yet, "is not valid yet")] {
            let (_, review) = gate.review(token, None).await;
            assert!(error(&review).contains(reason), "{review}");
        }
    }
    let (_, _, text) = gate.call(http::Method::GET, "/metrics", None).await;
    for needle in [
        // The expired token's rejection was kept (negative_ttl) and served twice more.
        r#"tokengate_local_rejections_total{reason="expired"} 1"#,
        // The not-yet-valid one will become valid: never kept.
        r#"tokengate_local_rejections_total{reason="not_yet_valid"} 3"#,
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[tokio::test]
async fn a_hundred_concurrent_requests_for_a_fresh_token_make_one_upstream_call() {
    let gate = std::sync::Arc::new(spawn_gate(&[]).await);
    gate.sim.set_latency(Duration::from_millis(200));
    let token = gate.workload_token("apps", "web", &["vault"]);
    let before = gate.upstream_calls();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let gate = gate.clone();
            let token = token.clone();
            tokio::spawn(async move { gate.review(&token, None).await })
        })
        .collect();
    for t in tasks {
        let (status, review) = t.await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert!(authenticated(&review));
    }
    assert_eq!(gate.upstream_calls() - before, 1);
}

#[tokio::test]
async fn a_verdict_for_one_audience_never_answers_another() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let (_, review) = gate.review(&token, Some(&["vault"])).await;
    assert!(authenticated(&review));
    let (_, review) = gate.review(&token, Some(&["payments"])).await;
    assert!(
        !authenticated(&review),
        "cached vault verdict leaked to payments: {review}"
    );
    assert!(error(&review).contains(r#"["payments"]"#));
    // And the other way round: a token for B first denied for A, then asked for B.
    let token_b = gate.mint("apps", "web", &["payments"], None);
    let (_, review) = gate.review(&token_b, Some(&["vault"])).await;
    assert!(!authenticated(&review));
    let (_, review) = gate.review(&token_b, Some(&["payments"])).await;
    assert!(authenticated(&review), "{review}");
}

#[tokio::test]
async fn upstream_failures_answer_503_and_are_never_cached() {
    let gate = spawn_gate(&[("TOKENGATE_UPSTREAM_TIMEOUT", "1500ms")]).await;
    for (name, failure) in [
        ("500", Failure::Status(500)),
        ("hang", Failure::Hang),
        ("reset", Failure::Reset),
        ("bad json", Failure::BadJson),
    ] {
        let token = gate.workload_token(
            "apps",
            &format!("web-{}", name.replace(' ', "-")),
            &["vault"],
        );
        gate.sim.fail_next(10, failure);
        let started = std::time::Instant::now();
        let (status, body) = gate.review(&token, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {body}");
        assert_eq!(body["kind"], "Status", "{name}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("cannot review the token now"),
            "{name}: {body}"
        );
        assert!(
            !body.to_string().contains(&token),
            "{name}: the token leaked into the error"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name}: took {:?}",
            started.elapsed()
        );
        // The failure was not cached: with the sim healthy again, the same token is asked again.
        gate.sim.fail_next(0, Failure::Status(500));
        let before = gate.upstream_calls();
        let (_, review) = gate.review(&token, None).await;
        assert!(authenticated(&review), "{name}: {review}");
        assert_eq!(gate.upstream_calls() - before, 1, "{name}");
    }
}

#[tokio::test]
async fn a_single_retryable_failure_is_retried_inside_the_budget() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    gate.sim.fail_next(1, Failure::Status(500));
    let before = gate.upstream_calls();
    let (_, review) = gate.review(&token, None).await;
    assert!(authenticated(&review), "{review}");
    assert_eq!(gate.upstream_calls() - before, 2);
    // 503 is not retried (the API server's webhook client does not retry it either).
    let token = gate.workload_token("apps", "api", &["vault"]);
    gate.sim.fail_next(1, Failure::Status(503));
    let before = gate.upstream_calls();
    let (status, _) = gate.review(&token, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gate.upstream_calls() - before, 1);
}

#[tokio::test]
async fn cached_verdicts_keep_being_served_while_the_api_server_fails() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let (_, review) = gate.review(&token, None).await;
    assert!(authenticated(&review));
    gate.sim.fail_next(1000, Failure::Status(500));
    let (status, review) = gate.review(&token, None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(authenticated(&review));
}

#[tokio::test]
async fn a_deleted_pod_fails_a_fresh_token_at_the_api_server_and_the_no_is_passed_on() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    assert!(gate.sim.delete_pod("apps", "web-0"));
    let (_, review) = gate.review(&token, None).await;
    assert!(!authenticated(&review));
    // The API server's wording since it stopped telling why (kubernetes#123157 era).
    assert_eq!(
        error(&review),
        "[invalid bearer token, service account token has been invalidated]"
    );
    // A definitive no is cached for negative_ttl: asking again costs nothing.
    let before = gate.upstream_calls();
    let (_, review) = gate.review(&token, None).await;
    assert!(!authenticated(&review));
    assert_eq!(gate.upstream_calls(), before);
}

#[tokio::test]
async fn the_reviewer_token_file_is_re_read_when_rotated() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    // Revoke the reviewer's old credential: recreate its service account (new UID), mint
    // a new token for it and write it the way the kubelet does (new file, atomic rename).
    assert!(
        gate.sim
            .delete_service_account("tokengate", "tokengate-reviewer")
    );
    gate.sim
        .create_service_account("tokengate", "tokengate-reviewer");
    let fresh = gate.mint(
        "tokengate",
        "tokengate-reviewer",
        &[gate.sim.issuer()],
        None,
    );
    let path = gate.files().join("reviewer.token");
    let tmp = gate.files().join("reviewer.token.new");
    std::fs::write(&tmp, &fresh).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    // The caller (Vault) now presents the new credential too.
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    let (status, review) = gate.post("/review", Some(&fresh), body.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{review}");
    assert!(authenticated(&review), "{review}");
}

#[tokio::test]
async fn callers_without_a_valid_allowed_credential_are_refused() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}).to_string();
    let (status, s) = gate.post("/review", None, body.clone()).await;
    assert_eq!(
        (status, s["kind"].as_str(), s["reason"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("Status"),
            Some("Unauthorized")
        )
    );
    let (status, _) = gate.post("/review", Some("garbage"), body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A valid token of a service account that is not in access.review_callers.
    let stranger = gate.workload_token("apps", "stranger", &[gate.sim.issuer()]);
    let (status, s) = gate
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(&stranger),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        s["message"].as_str().unwrap().contains(
            r#"User "system:serviceaccount:apps:stranger" cannot create resource "tokenreviews""#
        ),
        "{s}"
    );
    // Allowed by group.
    let callers =
        "system:serviceaccount:tokengate:tokengate-reviewer,group:system:serviceaccounts:apps";
    let gate = spawn_gate(&[("TOKENGATE_ACCESS_REVIEW_CALLERS", callers)]).await;
    let caller = gate.workload_token("apps", "caller", &[gate.sim.issuer()]);
    let token = gate.workload_token("apps", "web", &["vault"]);
    let body = json!({"spec": {"token": token}}).to_string();
    let (status, review) = gate.post("/review", Some(&caller), body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(authenticated(&review));
}

#[tokio::test]
async fn requests_that_are_not_token_reviews_get_a_status_400_or_413() {
    let gate = spawn_gate(&[]).await;
    let reviewer = gate.sim.reviewer_token();
    for (body, needle) in [
        ("{".to_string(), "the request body is not a TokenReview"),
        (
            json!({"spec": {"token": ""}}).to_string(),
            "token is required for TokenReview in authentication",
        ),
        (
            json!({"spec": {}}).to_string(),
            "token is required for TokenReview in authentication",
        ),
        (
            json!({"kind": "Pod", "spec": {"token": "x"}}).to_string(),
            "kind \"Pod\" is not a TokenReview",
        ),
        (
            json!({"apiVersion": "v2", "spec": {"token": "x"}}).to_string(),
            "apiVersion \"v2\" is not served here",
        ),
    ] {
        let (status, s) = gate.post("/review", Some(&reviewer), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(s["kind"], "Status");
        assert!(s["message"].as_str().unwrap().contains(needle), "{s}");
    }
    let huge = json!({"spec": {"token": "a".repeat(100 * 1024)}}).to_string();
    let (status, s) = gate.post("/review", Some(&reviewer), huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s["reason"], "RequestEntityTooLarge");
}

#[tokio::test]
async fn a_v1beta1_review_is_answered_in_v1beta1() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let body = json!({"apiVersion": "authentication.k8s.io/v1beta1", "kind": "TokenReview", "spec": {"token": token}});
    let (status, review) = gate
        .post(
            "/review",
            Some(&gate.sim.reviewer_token()),
            body.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1beta1");
    assert!(authenticated(&review));
}

#[tokio::test]
async fn readiness_waits_for_the_api_server_and_health_does_not() {
    // A gate whose API server is not there yet: healthy, not ready.
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let text = tokengate::cli::dev_config(
        "127.0.0.1:0".parse().unwrap(),
        "https://127.0.0.1:1",
        dir.path(),
        sim.issuer(),
    );
    let config = tokengate::config::from_str(&text, std::iter::empty()).unwrap();
    let gate = tokengate::build(&config).await.unwrap();
    let limits = gate.limits;
    let app = tokengate::router(gate.state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tokengate::http::serve(
        listener,
        None,
        limits,
        app,
        std::future::pending(),
    ));
    assert_eq!(get(&format!("{url}/healthz")).await.0, StatusCode::OK);
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("has not answered"), "{body}");
    // With the sim there, the gate turns ready.
    let gate = spawn_gate_for(sim, dir, &[]).await;
    assert_eq!(get(&format!("{}/readyz", gate.url)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_upstream_yes_for_a_token_the_gate_sees_as_foreign_needs_an_api_audience() {
    // A token of another issuer, reviewed for the API server's own audience, is forwarded:
    // the API server's other authenticators might know it. The sim does not.
    let gate = spawn_gate(&[]).await;
    let issuer = gate.sim.issuer().to_string();
    let before = gate.upstream_calls();
    let (_, review) = gate
        .review("bootstrap-token-abcdef", Some(&[&issuer]))
        .await;
    assert!(!authenticated(&review));
    assert_eq!(gate.upstream_calls() - before, 1);
    let (_, review) = gate
        .review("bootstrap-token-abcdef", Some(&["vault"]))
        .await;
    assert_eq!(error(&review), "invalid bearer token", "{review}");
    assert_eq!(gate.upstream_calls() - before, 1);
}

/// Waits (bounded) until the sim has received `n` more TokenReviews than `before`.
async fn until_upstream_calls(gate: &TestGate, before: u64, n: u64) {
    eventually(
        Duration::from_secs(10),
        "the sim gets the call",
        async || gate.upstream_calls() >= before + n,
    )
    .await;
}

#[tokio::test]
async fn a_positive_verdict_lives_max_ttl_and_never_past_the_tokens_exp() {
    let clock = TestClock::new();
    let gate = spawn_gate_with_clock(&[("TOKENGATE_CACHE_MAX_TTL", "2m")], clock.clone()).await;

    // A token that expires in 90 s: its verdict dies at exp, before max_ttl.
    let uid = gate.sim.create_service_account("apps", "short");
    let exp = tokengate::token::unix_seconds(tokengate::review::Clock::now(&*clock)) + 90;
    let short = gate.signed_token("apps", "short", &uid, &["vault"], exp - 100, exp);
    let before = gate.upstream_calls();
    assert!(authenticated(&gate.review(&short, None).await.1));
    let at = |s: i64| UNIX_EPOCH + Duration::from_secs(s as u64);
    let to_exp = at(exp)
        .duration_since(tokengate::review::Clock::now(&*clock))
        .unwrap();
    clock.advance(to_exp - Duration::from_secs(1));
    assert!(authenticated(&gate.review(&short, None).await.1));
    assert_eq!(
        gate.upstream_calls() - before,
        1,
        "served from the cache before exp"
    );
    clock.advance(Duration::from_secs(1));
    let _ = gate.review(&short, None).await;
    assert_eq!(
        gate.upstream_calls() - before,
        2,
        "not served from the cache at exp"
    );

    // A one-hour token: capped by max_ttl.
    // (The reviewer's own verdict expires on the same schedule: start it afresh.)
    let token = gate.workload_token("apps", "web", &["vault"]);
    clock.advance(Duration::from_secs(121));
    gate.authenticate_reviewer().await;
    let before = gate.upstream_calls();
    assert!(authenticated(&gate.review(&token, None).await.1));
    clock.advance(Duration::from_secs(119));
    assert!(authenticated(&gate.review(&token, None).await.1));
    assert_eq!(
        gate.upstream_calls() - before,
        1,
        "served from the cache inside max_ttl"
    );
    clock.advance(Duration::from_secs(1));
    gate.authenticate_reviewer().await;
    let before = gate.upstream_calls();
    assert!(authenticated(&gate.review(&token, None).await.1));
    assert_eq!(gate.upstream_calls() - before, 1, "asked again at max_ttl");
}

#[tokio::test]
async fn a_401_re_reads_the_token_file_and_retries_once() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let path = gate.files().join("reviewer.token");
    let old = std::fs::read_to_string(&path).unwrap();
    assert!(
        gate.sim
            .delete_service_account("tokengate", "tokengate-reviewer")
    );
    gate.sim
        .create_service_account("tokengate", "tokengate-reviewer");
    let fresh = gate.mint(
        "tokengate",
        "tokengate-reviewer",
        &[gate.sim.issuer()],
        None,
    );
    assert_eq!(
        fresh.len(),
        old.trim().len(),
        "same length, so the file's size does not give the change away"
    );
    // Rewrite in place (same inode, same size) and put the old mtime back: nothing about
    // the file says it changed, so only the API server's 401 can tell the gate.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, format!("{fresh}{}", &old[old.trim_end().len()..])).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let body = json!({"spec": {"token": token}}).to_string();
    let before = gate.upstream_calls();
    let (status, review) = gate.post("/review", Some(&fresh), body).await;
    assert_eq!(status, StatusCode::CREATED, "{review}");
    assert!(authenticated(&review), "{review}");
    // Caller's token: 401 + retry; then the workload's token.
    assert_eq!(gate.upstream_calls() - before, 3);
}

#[tokio::test]
async fn past_max_in_flight_a_review_is_refused_at_once_not_queued() {
    let gate = spawn_gate(&[("TOKENGATE_UPSTREAM_MAX_IN_FLIGHT", "1")]).await;
    let first = gate.workload_token("apps", "web", &["vault"]);
    let second = gate.workload_token("apps", "api", &["vault"]);
    gate.sim.set_latency(Duration::from_secs(2));
    let gate = std::sync::Arc::new(gate);
    let before = gate.upstream_calls();
    let slow = tokio::spawn({
        let gate = gate.clone();
        async move { gate.review(&first, None).await }
    });
    until_upstream_calls(&gate, before, 1).await;
    let (status, body) = gate.review(&second, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // What happened, not the setting to change: that is the operator's, in the log.
    assert_eq!(
        body["message"],
        "cannot review the token now: too many reviews are waiting on the API server",
        "{body}"
    );
    let (status, review) = slow.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert!(authenticated(&review));
    assert_eq!(
        gate.upstream_calls() - before,
        1,
        "the refused review never reached the sim"
    );
}

#[tokio::test]
async fn the_api_server_can_be_named_by_a_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nkubeconfig = \"{}\"\n[policy]\naudiences = [\"vault\"]\nissuers = [\"{}\"]\n[access]\nreview_callers = [\"system:serviceaccount:tokengate:tokengate-reviewer\"]\n",
        dir.path().join("kubeconfig").display(),
        sim.issuer()
    );
    let config = tokengate::config::from_str(&text, std::iter::empty()).unwrap();
    let gate = tokengate::build(&config).await.unwrap();
    sim.create_service_account("apps", "web");
    let token = sim
        .mint(&tokengate_sim::MintRequest {
            namespace: "apps".into(),
            service_account: "web".into(),
            audiences: vec!["vault".into()],
            expiration_seconds: None,
            pod: None,
        })
        .unwrap();
    let decision = gate
        .state
        .reviewer
        .review(&token, &["vault".to_string()], gate.state.reviewer.now())
        .await
        .unwrap();
    assert!(decision.verdict.authenticated, "{:?}", decision.verdict);
}

#[tokio::test]
async fn in_subjectaccessreview_mode_the_api_server_decides_who_may_review() {
    let gate = spawn_gate(&[("TOKENGATE_ACCESS_MODE", "subjectaccessreview")]).await;
    // spawn_gate's first review asked the sim once for the reviewer; the answer is kept.
    assert_eq!(gate.sim.access_reviews_served(), 1);
    let token = gate.workload_token("apps", "web", &["vault"]);
    for _ in 0..5 {
        let (status, review) = gate.review(&token, None).await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(authenticated(&review));
    }
    assert_eq!(
        gate.sim.access_reviews_served(),
        1,
        "the allowed answer is cached"
    );

    // A caller the RBAC table does not name: refused with the API server's wording.
    let stranger = gate.workload_token("apps", "stranger", &[gate.sim.issuer()]);
    let body = json!({"spec": {"token": token}}).to_string();
    let (status, s) = gate.post("/review", Some(&stranger), body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{s}");
    assert!(
        s["message"].as_str().unwrap().contains(
            r#"User "system:serviceaccount:apps:stranger" cannot create resource "tokenreviews""#
        ),
        "{s}"
    );
    // Bound to system:auth-delegator, a caller of another identity is let in.
    gate.sim
        .allow_reviewer("system:serviceaccount:apps:delegate");
    let delegate = gate.workload_token("apps", "delegate", &[gate.sim.issuer()]);
    let (status, review) = gate.post("/review", Some(&delegate), body).await;
    assert_eq!(status, StatusCode::CREATED, "{review}");
    assert_eq!(gate.sim.access_reviews_served(), 3);
}

#[tokio::test]
async fn a_legacy_token_may_authenticate_a_caller_though_workloads_may_not_use_one() {
    // Vault's token_reviewer_jwt is often a long-lived Secret token: the API server
    // accepts it for its own audiences, and so does the gate for callers.
    let gate = spawn_gate(&[]).await;
    let legacy_reviewer = gate.sim.legacy_token("tokengate", "tokengate-reviewer");
    let token = gate.workload_token("apps", "web", &["vault"]);
    let body = json!({"spec": {"token": token}}).to_string();
    let (status, review) = gate.post("/review", Some(&legacy_reviewer), body).await;
    assert_eq!(status, StatusCode::CREATED, "{review}");
    assert!(authenticated(&review));
    let (_, review) = gate.review(&legacy_reviewer, None).await;
    assert!(
        error(&review).contains("legacy service account token"),
        "{review}"
    );
}

/// One connection can carry several callers' requests (a proxy in front of the gate):
/// each request is judged by its own token, and a reload that changes which caller
/// tokens are valid, or who may call, applies to a kept-alive connection at once.
#[tokio::test]
async fn one_connection_with_several_callers_judges_each_request_by_its_own_token() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let stranger = gate.workload_token("apps", "stranger", &[gate.sim.issuer()]);
    let reviewer = gate.sim.reviewer_token();
    // The reviewer's token with its last character changed: a forged signature.
    let mut forged = reviewer.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });

    let mut connection = KeptAlive::open(&gate).await;
    for (caller, expected) in [
        (&reviewer, StatusCode::CREATED),
        (&stranger, StatusCode::FORBIDDEN),
        (&forged, StatusCode::UNAUTHORIZED),
        (&reviewer, StatusCode::CREATED),
        (&reviewer, StatusCode::CREATED),
        (&forged, StatusCode::UNAUTHORIZED),
        (&reviewer, StatusCode::CREATED),
        (&reviewer, StatusCode::CREATED),
    ] {
        let (status, answer) = connection.review_as(caller, &token).await;
        assert_eq!(status, expected, "{answer}");
    }
    // The admitted reviewer's token in other `Authorization` values: the connection's
    // memory of it answers only what reading the header afresh would, and that is what
    // the API server reads: the word after `Bearer ` (a tab is part of it; what follows
    // a second space is ignored).
    for (authorization, expected) in [
        (format!(" bearer {reviewer}\t "), StatusCode::CREATED),
        (format!("bearer \t{reviewer}\t "), StatusCode::UNAUTHORIZED),
        (format!("Bearer  {reviewer}"), StatusCode::UNAUTHORIZED),
        (format!("Basic {reviewer}"), StatusCode::UNAUTHORIZED),
        (format!("Bearer\t{reviewer}"), StatusCode::UNAUTHORIZED),
        (format!("Bearer {reviewer}\u{e9}"), StatusCode::UNAUTHORIZED),
        (format!("Bearer {reviewer} x"), StatusCode::CREATED),
        (format!("Bearer {reviewer}"), StatusCode::CREATED),
    ] {
        let (status, answer) = connection
            .review_with(authorization.as_bytes(), &token)
            .await;
        assert_eq!(status, expected, "{answer}");
    }
    // A reload after which the reviewer is no longer allowed to call.
    let config = test_config(
        &gate.sim,
        gate.dir.path(),
        &[("TOKENGATE_ACCESS_REVIEW_CALLERS", r#"["someone-else"]"#)],
    );
    assert_eq!(gate.state.reconfigure(config), ["access changed"]);
    let (status, answer) = connection.review_as(&reviewer, &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    // Allowed again, then a reload after which the reviewer's token is for none of the
    // API server's audiences.
    assert_eq!(
        gate.state
            .reconfigure(test_config(&gate.sim, gate.dir.path(), &[])),
        ["access changed"]
    );
    for _ in 0..2 {
        let (status, answer) = connection.review_as(&reviewer, &token).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let config = test_config(
        &gate.sim,
        gate.dir.path(),
        &[("TOKENGATE_POLICY_API_AUDIENCES", "elsewhere")],
    );
    assert!(!gate.state.reconfigure(config).is_empty());
    let (status, answer) = connection.review_as(&reviewer, &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
}

/// A caller on a kept-alive connection is checked again once its cached verdict has
/// expired: the caller's token goes back to the API server.
#[tokio::test]
async fn a_kept_alive_callers_token_is_asked_about_again_once_its_verdict_expires() {
    let clock = TestClock::new();
    let gate = spawn_gate_with_clock(&[], clock.clone()).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let reviewer = gate.sim.reviewer_token();
    let mut connection = KeptAlive::open(&gate).await;
    for _ in 0..3 {
        let (status, answer) = connection.review_as(&reviewer, &token).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let before = gate.upstream_calls();
    let (status, answer) = connection.review_as(&reviewer, &token).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(gate.upstream_calls(), before, "everything was cached");
    // Past max_ttl (2 minutes): both verdicts, the caller's and the workload token's,
    // have expired by the gate's clock (the sim, on the real clock, still says yes).
    clock.advance(Duration::from_secs(121));
    let (status, answer) = connection.review_as(&reviewer, &token).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(
        gate.upstream_calls(),
        before + 2,
        "the caller's token and the workload's were both asked about again"
    );
}
