//! Socket-level tests of the sim: a real listener on port 0, a hyper client over rustls
//! that trusts only `ca_pem()`, and the knobs that only a socket can show (reset, hang).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::*;

pub(super) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client that trusts exactly the sim's CA.
pub(super) fn client(ca_pem: &str) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn send(
    client: &HttpsClient,
    method: Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(StatusCode, hyper::HeaderMap, Value), hyper_util::client::legacy::Error> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = request
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((parts.status, parts.headers, json))
}

async fn review(
    sim: &Sim,
    client: &HttpsClient,
    token: &str,
    audiences: &[&str],
) -> Result<(StatusCode, Value), hyper_util::client::legacy::Error> {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": token, "audiences": audiences}});
    let url = format!("{}/apis/authentication.k8s.io/v1/tokenreviews", sim.url());
    let (code, _, json) = send(
        client,
        Method::POST,
        url,
        Some(&sim.reviewer_token()),
        Some(body),
    )
    .await?;
    Ok((code, json))
}

#[tokio::test]
async fn a_pod_bound_token_is_reviewed_over_tls_until_the_pod_is_deleted() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    assert!(sim.url().starts_with("https://127.0.0.1:"));
    let client = client(&sim.ca_pem());
    sim.create_service_account("ns", "app");
    let pod_uid = sim.create_pod("ns", "web", "app");
    let token = sim
        .mint(&MintRequest {
            namespace: "ns".into(),
            service_account: "app".into(),
            audiences: vec!["vault".into()],
            expiration_seconds: Some(600),
            pod: Some("web".into()),
        })
        .expect("mint");

    let (code, json) = review(&sim, &client, &token, &["vault"])
        .await
        .expect("review");
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(json["status"]["authenticated"], true);
    assert_eq!(
        json["status"]["user"]["extra"]["authentication.kubernetes.io/pod-uid"],
        json!([pod_uid])
    );

    assert!(sim.delete_pod("ns", "web"));
    let (code, json) = review(&sim, &client, &token, &["vault"])
        .await
        .expect("review");
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(
        json["status"],
        json!({"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"})
    );
    assert_eq!(sim.reviews_served(), 2);
}

#[tokio::test]
async fn reset_closes_the_connection_without_a_response_then_serving_resumes() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    let token = sim.reviewer_token();
    sim.fail_next(1, Failure::Reset);
    let outcome = tokio::time::timeout(Duration::from_secs(10), review(&sim, &client, &token, &[]))
        .await
        .expect("a reset is immediate, not a hang");
    let err = outcome.expect_err("no response");
    assert!(!err.is_connect(), "the connection was made: {err:?}");
    assert!(
        is_connection_reset(&err),
        "a TCP reset, not a clean close: {err:?}"
    );
    let (code, json) = review(&sim, &client, &token, &[])
        .await
        .expect("serving again");
    assert_eq!(
        (code, &json["status"]["authenticated"]),
        (StatusCode::CREATED, &json!(true))
    );
    assert_eq!(sim.reviews_served(), 2);
}

fn is_connection_reset(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
        {
            return true;
        }
        current = e.source();
    }
    false
}

#[tokio::test]
async fn hang_never_answers_and_status_failures_look_like_the_api_server() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    let token = sim.reviewer_token();
    sim.fail_next(1, Failure::Hang);
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        review(&sim, &client, &token, &[]),
    )
    .await;
    assert!(hung.is_err(), "a hang must not answer");
    sim.fail_next(1, Failure::Status(429));

    let url = format!("{}/apis/authentication.k8s.io/v1/tokenreviews", sim.url());
    let body = json!({"spec": {"token": token}});
    let (code, headers, json) = send(&client, Method::POST, url, Some(&token), Some(body))
        .await
        .expect("answer");
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(json["reason"], "TooManyRequests");
    assert_eq!(json["details"]["retryAfterSeconds"], 1);
}

#[tokio::test]
async fn api_audiences_follow_the_issuer_unless_set() {
    let sim = Sim::start(SimOptions {
        issuer: "https://issuer.example".into(),
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    assert_eq!(sim.api_audiences(), ["https://issuer.example".to_owned()]);
    let client = client(&sim.ca_pem());
    let token = sim.reviewer_token();
    let (_, json) = review(&sim, &client, &token, &[]).await.expect("review");
    assert_eq!(
        json["status"]["audiences"],
        json!(["https://issuer.example"])
    );
}

#[tokio::test]
async fn latency_is_added_to_reviews() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    let token = sim.reviewer_token();
    review(&sim, &client, &token, &[]).await.expect("warm up");
    sim.set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    review(&sim, &client, &token, &[]).await.expect("review");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn plain_http_serves_discovery_and_the_jwks() {
    let sim = Sim::start(SimOptions {
        tls: false,
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    assert!(sim.url().starts_with("http://127.0.0.1:"));
    assert_eq!(sim.ca_pem(), "");
    let client = client("");
    let url = format!("{}/.well-known/openid-configuration", sim.url());
    let (code, headers, doc) = send(&client, Method::GET, url, None, None)
        .await
        .expect("discovery");
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"public, max-age=3600"[..])
    );
    let jwks_uri = doc["jwks_uri"].as_str().expect("jwks_uri").to_owned();
    assert_eq!(jwks_uri, format!("{}/openid/v1/jwks", sim.url()));
    let (code, _, jwks) = send(&client, Method::GET, jwks_uri, None, None)
        .await
        .expect("jwks");
    assert_eq!(code, StatusCode::OK);
    assert_eq!(jwks["keys"][0]["kid"], sim.current_kid());
}

#[tokio::test]
async fn out_dir_holds_ca_reviewer_token_and_kubeconfig() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("sim");
    let sim = Sim::start(SimOptions {
        out_dir: Some(out.clone()),
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
    assert_eq!(read("ca.crt"), sim.ca_pem());
    assert_eq!(read("reviewer.token"), sim.reviewer_token());
    let kubeconfig = read("kubeconfig");
    assert!(kubeconfig.contains(&format!("server: {}", sim.url())));
    assert!(kubeconfig.contains(&format!("token: {}", sim.reviewer_token())));
    assert!(kubeconfig.contains(&format!(
        "certificate-authority-data: {}",
        STANDARD.encode(sim.ca_pem())
    )));
}

#[tokio::test]
async fn run_returns_on_shutdown_and_shutdown_closes_the_port() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(run(SimOptions::default(), async {
        let _ = stopped.await;
    }));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run returns")
        .expect("task")
        .expect("ok");

    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let addr = sim.addr();
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn kubectl_reads_the_jwks_through_the_written_kubeconfig() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(SimOptions {
        out_dir: Some(dir.path().to_owned()),
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    let kubeconfig = dir.path().join("kubeconfig");
    let output = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", "/openid/v1/jwks"])
        .output()
        .await
        .expect("kubectl must be installed (scripts/test installs it)");
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let jwks: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(jwks["keys"][0]["kid"], sim.current_kid());
}
