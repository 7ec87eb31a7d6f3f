//! The process's life: SIGTERM drains without losing a request; SIGHUP (or a changed
//! file) reloads the configuration, and a bad one is refused while the old one serves.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use tokengate_sim::{MintRequest, Sim};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::ChildStderr;

use crate::support::*;

fn mint(sim: &Sim, name: &str, aud: &str) -> String {
    sim.create_service_account("apps", name);
    sim.mint(&MintRequest {
        namespace: "apps".into(),
        service_account: name.into(),
        audiences: vec![aud.into()],
        ..Default::default()
    })
    .unwrap()
}

async fn review(url: &str, reviewer: &str, token: &str) -> (StatusCode, Value) {
    let client = plain_client();
    let body = json!({"spec": {"token": token}}).to_string();
    post_with(&client, &format!("{url}/review"), reviewer, body).await
}

/// Reads log lines until one contains `needle` (bounded); returns it.
async fn log_line(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> String {
    let find = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the log ended without {needle:?}");
    };
    tokio::time::timeout(Duration::from_secs(15), find)
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?} within 15s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_and_answers_every_request_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let (mut child, url, _) =
        serve_process(&sim, dir.path(), &[("TOKENGATE_SHUTDOWN_DELAY", "1s")]).await;
    let reviewer = sim.reviewer_token();
    // Authenticate the reviewer first, so that the calls below are the slow ones.
    review(&url, &reviewer, "warm-up").await;
    let tokens: Vec<String> = (0..5)
        .map(|i| mint(&sim, &format!("web-{i}"), "vault"))
        .collect();
    sim.set_latency(Duration::from_millis(1500));
    let before = sim.reviews_served();
    let in_flight: Vec<_> = tokens
        .iter()
        .map(|t| {
            let (url, reviewer, t) = (url.clone(), reviewer.clone(), t.clone());
            tokio::spawn(async move { review(&url, &reviewer, &t).await })
        })
        .collect();
    // Every request is at the sim, waiting out its latency.
    eventually(
        Duration::from_secs(10),
        "the reviews reach the sim",
        async || sim.reviews_served() >= before + 5,
    )
    .await;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    signal(&child, "TERM").await;
    log_line(&mut lines, "draining").await;
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness turns false first"
    );
    assert!(body.contains("shutting down"));
    for task in in_flight {
        let (status, review) = task.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{review}");
        assert_eq!(review["status"]["authenticated"], true);
    }
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_and_a_bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let (mut child, url, config) = serve_process(&sim, dir.path(), &[]).await;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let reviewer = sim.reviewer_token();
    let payments = mint(&sim, "web", "payments");
    let (_, answer) = review(&url, &reviewer, &payments).await;
    assert!(!authenticated(&answer), "the gate guards vault: {answer}");

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(r#"audiences = ["vault"]"#, r#"audiences = ["payments"]"#),
    )
    .unwrap();
    signal(&child, "HUP").await;
    let line = log_line(&mut lines, "configuration reloaded").await;
    assert!(line.contains("cached verdicts dropped"), "{line}");
    let (_, answer) = review(&url, &reviewer, &payments).await;
    assert_eq!(answer["status"]["authenticated"], true, "{answer}");

    std::fs::write(&config, "[cache]\nmax_ttl = \"forever\"\n").unwrap();
    signal(&child, "HUP").await;
    let line = log_line(&mut lines, "new configuration refused").await;
    assert!(line.contains("cache.max_ttl"), "{line}");
    let (_, answer) = review(&url, &reviewer, &payments).await;
    assert_eq!(
        answer["status"]["authenticated"], true,
        "the old configuration still serves"
    );
    signal(&child, "TERM").await;
    assert!(child.wait().await.unwrap().success());
}
