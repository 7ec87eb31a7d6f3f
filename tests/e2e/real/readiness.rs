//! The gate becomes ready in front of the real API server with the README's settings
//! (signature keys from OIDC discovery), and the sim negotiates the discovery documents'
//! media types exactly as the real API server does.

use bytes::Bytes;
use http::StatusCode;
use http::header::{ACCEPT, AUTHORIZATION};
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;

use super::*;
use crate::support::{authenticated, client_trusting, start_sim};

/// The `Accept` values a client might send, from none to several headers.
const ACCEPTS: &[&[&str]] = &[
    &[],
    &[""],
    &["application/json"],
    &["application/jwk-set+json"],
    &["*/*"],
    &["application/*"],
    &["application/jwk-set+json;q=0.9"],
    &["application/json, application/jwk-set+json"],
    &["APPLICATION/JWK-SET+JSON"],
    &["text/html"],
    &["application/json", "application/jwk-set+json"],
    &["application/jwk-set+json", "text/html"],
];

/// Status code and `Status` message (empty for a success) of a GET.
fn outcome(status: StatusCode, body: &[u8]) -> (u16, String) {
    let message = if status.is_success() {
        String::new()
    } else {
        let status: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        format!("{} {}", status["reason"], status["message"])
    };
    (status.as_u16(), message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_negotiates_the_oidc_documents_media_types_as_the_real_api_server() {
    let plane = control_plane().await;
    let admin = plane.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path()).await;
    let sim_client = client_trusting(&std::fs::read_to_string(dir.path().join("ca.crt")).unwrap());
    for path in ["/openid/v1/jwks", "/.well-known/openid-configuration"] {
        for accepts in ACCEPTS {
            let mut real = http::Request::get(path);
            let mut simulated = http::Request::get(format!("{}{path}", sim.url()))
                .header(AUTHORIZATION, format!("Bearer {}", sim.reviewer_token()));
            for a in *accepts {
                real = real.header(ACCEPT, *a);
                simulated = simulated.header(ACCEPT, *a);
            }
            let response = admin
                .send(real.body(kube::client::Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let real = outcome(status, &body);
            let response = sim_client
                .request(simulated.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                outcome(status, &body),
                real,
                "GET {path} with Accept {accepts:?}: the sim answers otherwise than the API server"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_becomes_ready_with_the_real_api_servers_discovery_keys_and_checks_signatures() {
    let gate = start_gate(&[]).await;
    let (status, body) = gate.readyz_within(std::time::Duration::from_secs(15)).await;
    assert_eq!(status, StatusCode::OK, "/readyz: {body}");
    let keys = gate.state.reviewer.keys().expect("keys from discovery");
    assert!(keys.is_loaded(), "the issuer's keys are loaded");

    let plane = gate.plane;
    plane.service_account("ready", "web").await;
    let pod = plane.pod("ready", "web-0", "web").await;
    let token = plane
        .token("ready", "web", &["vault"], Some(("web-0", &pod)), 3600)
        .await;
    let (status, review) = gate.review(&token, &["vault"]).await;
    assert_eq!(status, StatusCode::CREATED, "{review}");
    assert!(authenticated(&review), "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:ready:web"
    );

    // The same token with one byte of its signature changed never reaches the API server.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let before = gate.upstream_reviews().await;
    let (_, review) = gate.review(&forged, &["vault"]).await;
    assert!(!authenticated(&review), "{review}");
    assert_eq!(
        gate.upstream_reviews().await,
        before,
        "a forged signature is rejected with the published keys, locally"
    );
}
