//! The miss path against the real kube-apiserver: the same fresh tokens' TokenReviews
//! sent straight to the API server (the baseline) and through tokengate, interleaved, in
//! one run; then a cached review through tokengate beside the same review at the API
//! server (whose own cache keeps a "yes" 10 s); then 50 OpenBao logins with one token,
//! its kubernetes auth pointed at tokengate and at the API server (`bao` on PATH, as
//! `scripts/test` installs it): their time, and the TokenReviews the API server served.
//!
//! Run: `cargo bench --bench real` (release build; the control plane is built by
//! `scripts/kube-apiserver`, or found through `TEST_KUBE_BIN`). `cargo test --all-targets`
//! runs it once without `--bench`, at toy size, as a smoke test that measures nothing.
//! `TOKENGATE_BENCH_REAL_TOKENS` sets the fresh tokens per path (default 300).
//!
//! Both paths go over kept-alive connections: the baseline over TLS with the admin's
//! client certificate, tokengate's over plain HTTP to it and kept-alive TLS with the
//! reviewer's token from it to the API server. The figure that matters is the difference
//! of the medians, and the p99s beside them.

#[path = "../tests/e2e/bao.rs"]
mod bao;
#[path = "../tests/e2e/real/control_plane.rs"]
#[allow(
    dead_code,
    reason = "the tests' control plane; the bench uses part of it"
)]
mod control_plane;
#[path = "../tests/e2e/eventually.rs"]
#[allow(
    dead_code,
    reason = "the tests' bounded wait; the bench's peers use only part of it"
)]
mod eventually;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

use control_plane::{ISSUER, control_plane};

const NS: &str = "bench";
/// The added median latency a miss may cost over the API server's own (issue 20).
const MAX_ADDED_P50: Duration = Duration::from_micros(200);

fn review_body(token: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                               "spec": {"token": token, "audiences": ["vault"]}}),
    )
    .unwrap()
}

/// The quantile `q` of `times`, sorted in place.
fn quantile(times: &mut [Duration], q: f64) -> Duration {
    times.sort();
    let i = ((times.len() as f64 - 1.0) * q).round() as usize;
    times[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let n: usize = if measuring {
        std::env::var("TOKENGATE_BENCH_REAL_TOKENS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    } else {
        3
    };
    let plane = control_plane().await;
    let admin = plane.admin().await;
    for args in [
        vec!["create", "namespace", NS],
        vec!["-n", NS, "create", "serviceaccount", "web"],
        vec!["-n", NS, "create", "serviceaccount", "reviewer"],
        vec![
            "create",
            "clusterrolebinding",
            "bench-reviewer",
            "--clusterrole=system:auth-delegator",
            "--serviceaccount=bench:reviewer",
        ],
    ] {
        plane.kubectl(&args).await;
    }

    // The gate, in this process, reviewing with its own service account's token.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("reviewer.token");
    let reviewer = plane.token(NS, "reviewer", &[ISSUER], None, 3600).await;
    std::fs::write(&token_file, &reviewer).unwrap();
    let text = plane.gate_config(&token_file, "system:serviceaccount:bench:reviewer");
    let config = tokengate::config::from_str(&text, std::iter::empty()).unwrap();
    let gate = tokengate::build(&config).await.unwrap();
    let state = Arc::clone(&gate.state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tokengate::run(listener, gate, std::future::pending()));
    state.reviewer.upstream().wait_ready().await;
    if let Some(keys) = state.reviewer.keys() {
        keys.wait_loaded().await;
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let through_gate = async |token: &str| -> Duration {
        let request = http::Request::post(format!("{gate_url}/review"))
            .header("authorization", format!("Bearer {reviewer}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(review_body(token))))
            .unwrap();
        let started = Instant::now();
        let response = client.request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let took = started.elapsed();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["status"]["authenticated"], true, "{answer}");
        took
    };
    let direct = async |token: &str| -> Duration {
        let request = http::Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
            .header("content-type", "application/json")
            .body(kube::client::Body::from(review_body(token)))
            .unwrap();
        let started = Instant::now();
        let response = admin.send(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let took = started.elapsed();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["status"]["authenticated"], true, "{answer}");
        took
    };

    // The reviewer's own token is authenticated once, and both connections are opened.
    let warm = plane.token(NS, "web", &["vault"], None, 3600).await;
    through_gate(&warm).await;
    direct(&warm).await;

    let mut fresh = Vec::with_capacity(2 * n);
    for _ in 0..2 * n {
        fresh.push(plane.token(NS, "web", &["vault"], None, 3600).await);
    }
    let (mut api, mut gated) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for pair in fresh.chunks(2) {
        api.push(direct(&pair[0]).await);
        gated.push(through_gate(&pair[1]).await);
    }
    let (mut api_cached, mut gate_cached) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        api_cached.push(direct(&warm).await);
        gate_cached.push(through_gate(&warm).await);
    }
    let logins = if measuring { 50 } else { 2 };
    let fresh_for_openbao = plane.token(NS, "web", &["vault"], None, 3600).await;
    let openbao = openbao_logins(plane, &gate_url, &reviewer, &fresh_for_openbao, logins).await;
    if !measuring {
        println!(
            "smoke run: {n} misses and {n} cached reviews each way answered, {logins} OpenBao logins each way"
        );
        return;
    }

    let rows = [
        (
            "miss: the API server's own TokenReview (baseline)",
            &mut api,
        ),
        ("miss: through tokengate", &mut gated),
        ("cached: the API server (its 10 s cache)", &mut api_cached),
        ("cached: tokengate", &mut gate_cached),
    ];
    println!("{n} fresh tokens each way, interleaved; then {n} repeats of one token each way\n");
    println!("| row | p50 | p99 |");
    println!("|---|---|---|");
    let mut p50s = Vec::new();
    for (name, times) in rows {
        let (p50, p99) = (quantile(times, 0.5), quantile(times, 0.99));
        p50s.push(p50);
        println!("| {name} | {} | {} |", ms(p50), ms(p99));
    }
    println!();
    println!(
        "| {logins} OpenBao logins with one token | time | TokenReviews the API server served |"
    );
    println!("|---|---|---|");
    for (name, (took, reviews)) in [
        ("through tokengate", openbao.0),
        ("straight at the API server", openbao.1),
    ] {
        println!("| {name} | {:.2} s | {reviews} |", took.as_secs_f64());
    }
    let added = p50s[1].saturating_sub(p50s[0]);
    println!(
        "\nthe miss path adds {} at the median (target: at most {}): {}",
        ms(added),
        ms(MAX_ADDED_P50),
        if added <= MAX_ADDED_P50 {
            "PASS"
        } else {
            "MISS"
        }
    );
}

/// TokenReviews the API server has served, from its own `/metrics`.
async fn token_reviews_served(plane: &control_plane::ControlPlane) -> u64 {
    let request = http::Request::get("/metrics")
        .body(kube::client::Body::empty())
        .unwrap();
    let response = plane.admin().await.send(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{") && l.contains(r#"resource="tokenreviews""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `logins` OpenBao logins with `token`, a token neither has seen (role `web` of
/// `bench/web`, audience `vault`), first through tokengate at `gate_url`, then straight at
/// the API server: each path's time, and the TokenReviews the API server served meanwhile.
async fn openbao_logins(
    plane: &control_plane::ControlPlane,
    gate_url: &str,
    reviewer: &str,
    token: &str,
    logins: usize,
) -> ((Duration, u64), (Duration, u64)) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &plane.ca_pem).unwrap();
    let mut results = Vec::new();
    for (name, host) in [("gate", gate_url), ("direct", plane.url.as_str())] {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let bao = bao::Bao::start(&home).await;
        bao.kubernetes_auth(host, &ca, reviewer, NS).await;
        let before = token_reviews_served(plane).await;
        let started = Instant::now();
        for _ in 0..logins {
            bao.login("web", token).await.expect("web logs in");
        }
        let took = started.elapsed();
        results.push((took, token_reviews_served(plane).await - before));
    }
    (results[0], results[1])
}
