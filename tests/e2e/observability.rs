//! What operators see: `/metrics`, and logs that never carry a token.

use http::{Method, StatusCode};
use serde_json::json;
use tokengate_sim::Failure;
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

use crate::support::*;

#[tokio::test]
async fn metrics_count_requests_decisions_rejections_and_upstream_calls() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    gate.review(&token, None).await;
    gate.review(&token, None).await;
    gate.review(&token, Some(&["payments"])).await;
    gate.call(Method::GET, "/auth", Some(&token)).await;
    gate.call(Method::GET, "/auth", None).await;
    let (status, headers, text) = gate.call(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for needle in [
        // spawn_gate's own first review is a locally rejected non-JWT, hence 2 rejected.
        r#"tokengate_requests_total{endpoint="tokenreview",outcome="authenticated"} 2"#,
        r#"tokengate_requests_total{endpoint="tokenreview",outcome="rejected"} 2"#,
        r#"tokengate_requests_total{endpoint="auth",outcome="authenticated"} 1"#,
        r#"tokengate_requests_total{endpoint="auth",outcome="rejected"} 1"#,
        r#"tokengate_local_rejections_total{reason="audience"} 1"#,
        r#"tokengate_local_rejections_total{reason="foreign"} 1"#,
        r#"tokengate_upstream_request_duration_seconds_count{call="tokenreview"}"#,
        r#"tokengate_cache_entries{cache="positive"} 2"#,
        "tokengate_upstream_in_flight 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    // Caller auth + the token once: the rest came from the cache.
    assert!(
        text.contains(r#"tokengate_decisions_total{source="upstream"} 2"#),
        "{text}"
    );
    assert!(!text.contains(&token[..40]), "a token in the metrics");
}

/// Every part of a token long enough to identify it.
fn secret_parts(token: &str) -> Vec<String> {
    // The header segment is the same for every token of an issuer and names only the key.
    token
        .split('.')
        .skip(1)
        .filter(|p| p.len() >= 16)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_at_debug_carry_decisions_and_fingerprints_but_never_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let (mut child, url, _) =
        serve_process(&sim, dir.path(), &[("TOKENGATE_UPSTREAM_TIMEOUT", "1s")]).await;

    sim.create_service_account("apps", "web");
    let mint = |aud: &str| {
        sim.mint(&tokengate_sim::MintRequest {
            namespace: "apps".into(),
            service_account: "web".into(),
            audiences: vec![aud.into()],
            ..Default::default()
        })
        .unwrap()
    };
    let (good, other, failing) = (mint("vault"), mint("payments"), mint("vault"));
    let reviewer = sim.reviewer_token();
    let review = |token: &str| json!({"spec": {"token": token}}).to_string();
    let post = |token: String| {
        let url = url.clone();
        let reviewer = reviewer.clone();
        async move {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "POST",
                    &format!("{url}/review"),
                ])
                .args([
                    "-H",
                    &format!("Authorization: Bearer {reviewer}"),
                    "-d",
                    &review(&token),
                ])
                .output()
                .await
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        }
    };
    assert_eq!(post(good.clone()).await, "201");
    assert_eq!(post(good.clone()).await, "201");
    assert_eq!(post(other.clone()).await, "201");
    assert_eq!(post(format!("{good}x")).await, "201");
    sim.fail_next(100, Failure::Status(500));
    assert_eq!(post(failing.clone()).await, "503");
    let auth = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{url}/auth"),
            "-H",
            &format!("Authorization: Bearer {good}"),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&auth.stdout), "200");

    signal(&child, "TERM").await;
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    child.wait().await.unwrap();

    assert!(
        logs.contains(r#""source":"cache""#),
        "no decision source in\n{logs}"
    );
    assert!(logs.contains(r#""source":"upstream""#), "{logs}");
    // Each request's span ends in one debug line with its status and time taken.
    let answered = logs
        .lines()
        .filter(|l| l.contains(r#""message":"answered""#) && l.contains(r#""latency_us":"#))
        .count();
    assert!(answered >= 6, "{answered} 'answered' lines in\n{logs}");
    assert!(
        logs.contains(r#""status":201"#),
        "no status in the span in\n{logs}"
    );
    assert!(logs.contains(r#""status":503"#), "{logs}");
    assert!(
        logs.contains(r#""token":""#),
        "no token fingerprint in\n{logs}"
    );
    assert!(
        logs.contains("TokenReview to the API server failed"),
        "no warn line for the failure"
    );
    for token in [&good, &other, &failing, &reviewer] {
        for part in secret_parts(token) {
            assert!(!logs.contains(&part), "a token appears in the logs");
        }
    }
}
