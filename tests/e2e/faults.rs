//! The API server misbehaving: each fault fails closed within the time budget, is never
//! cached, is counted, and cached verdicts keep being served throughout.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokengate_sim::Failure;

use crate::support::*;

/// The value of one metric line (`name{labels}`), 0 when absent.
async fn metric(gate: &TestGate, series: &str) -> u64 {
    let (_, _, text) = gate.call(Method::GET, "/metrics", None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_once_the_server_allows_it() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    gate.sim.fail_next(1, Failure::Status(429));
    let before = gate.upstream_calls();
    let started = Instant::now();
    let (_, review) = gate.review(&token, None).await;
    assert!(authenticated(&review), "{review}");
    assert_eq!(gate.upstream_calls() - before, 2);
    // The sim says Retry-After: 1; the retry waited for it.
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_429_whose_retry_after_exceeds_the_budget_fails_at_once() {
    let gate = spawn_gate(&[("TOKENGATE_UPSTREAM_TIMEOUT", "800ms")]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    gate.sim.fail_next(5, Failure::Status(429));
    let before = gate.upstream_calls();
    let (status, body) = gate.review(&token, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["message"], "cannot review the token now: the API server answered HTTP 429",
        "{body}"
    );
    assert_eq!(
        gate.upstream_calls() - before,
        1,
        "no retry that could not finish in time"
    );
}

#[tokio::test]
async fn slow_answers_inside_the_budget_are_waited_for() {
    let gate = spawn_gate(&[("TOKENGATE_UPSTREAM_TIMEOUT", "2s")]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    gate.sim.set_latency(Duration::from_millis(500));
    let (_, review) = gate.review(&token, None).await;
    assert!(authenticated(&review));
}

#[tokio::test]
async fn faults_are_counted_by_kind_and_cached_verdicts_survive_them() {
    let gate = spawn_gate(&[("TOKENGATE_UPSTREAM_TIMEOUT", "1s")]).await;
    let cached = gate.workload_token("apps", "cached", &["vault"]);
    assert!(authenticated(&gate.review(&cached, None).await.1));
    for (failure, kind) in [
        (Failure::Hang, "timeout"),
        (Failure::Status(500), "status"),
        (Failure::BadJson, "bad_response"),
        (Failure::Reset, "connect"),
        (Failure::WrongContentType, "bad_response"),
        (Failure::NoUser, "bad_response"),
    ] {
        let token = gate.workload_token("apps", &format!("web-{kind}"), &["vault"]);
        gate.sim.fail_next(100, failure);
        let series =
            format!(r#"tokengate_upstream_errors_total{{call="tokenreview",kind="{kind}"}}"#);
        let before = metric(&gate, &series).await;
        let (status, _) = gate.review(&token, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{kind}");
        assert_eq!(metric(&gate, &series).await, before + 1, "{kind}");
        let (status, review) = gate.review(&cached, None).await;
        assert_eq!(status, StatusCode::CREATED, "{kind}");
        assert!(
            authenticated(&review),
            "cached verdict served during {kind}"
        );
        gate.sim.fail_next(0, Failure::Hang);
    }
}

#[tokio::test]
async fn an_api_server_with_a_certificate_from_another_ca_is_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    // Another sim's CA: a well-formed CA that did not sign this API server's certificate.
    let other = tempfile::tempdir().unwrap();
    let _other_sim = start_sim(other.path()).await;
    std::fs::copy(other.path().join("ca.crt"), dir.path().join("ca.crt")).unwrap();
    let text = tokengate::cli::dev_config(
        "127.0.0.1:0".parse().unwrap(),
        &sim.url(),
        dir.path(),
        sim.issuer(),
    );
    let config = tokengate::config::from_str(&text, std::iter::empty()).unwrap();
    let gate = tokengate::build(&config).await.unwrap();
    sim.create_service_account("apps", "web");
    let token = sim
        .mint(&tokengate_sim::MintRequest {
            namespace: "apps".into(),
            service_account: "web".into(),
            audiences: vec!["vault".into()],
            ..Default::default()
        })
        .unwrap();
    let before = sim.reviews_served();
    let err = gate
        .state
        .reviewer
        .review(&token, &["vault".to_string()], gate.state.reviewer.now())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot reach the API server"),
        "{err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(
        sim.reviews_served(),
        before,
        "no TokenReview crossed an untrusted connection"
    );
}

/// A caller is told what failed, in the same words at every endpoint; the internal
/// detail (here, the answer's Content-Type) is the operator's, in the log.
#[tokio::test]
async fn a_failure_tells_the_caller_what_happened_not_the_internal_detail() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    gate.sim.fail_next(10, Failure::WrongContentType);
    let words = "cannot review the token now: the API server's answer was not usable";
    let (status, body) = gate.review(&token, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["message"], words, "{body}");
    let (status, _, text) = gate
        .call(Method::GET, "/auth?audience=vault", Some(&token))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text, format!("{words}\n"));
}
