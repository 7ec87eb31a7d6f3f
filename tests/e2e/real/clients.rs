//! Real clients through tokengate, beside the same clients pointed at the real API server:
//! each gets the same answer.

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

/// A kubeconfig for `server` (trusting `ca`) with `token` as the user's credential.
fn kubeconfig(
    dir: &std::path::Path,
    name: &str,
    server: &str,
    ca: &str,
    token: &str,
) -> std::path::PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_raw_gets_the_same_answer_from_tokengate_as_from_the_api_server() {
    let gate = real_https_gate(&[]).await;
    let plane = gate.plane;
    plane.service_account("kubectl", "web").await;
    let pod = plane.pod("kubectl", "web-0", "web").await;
    let token = plane
        .token("kubectl", "web", &["vault"], Some(("web-0", &pod)), 3600)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let through_gate = kubeconfig(
        dir.path(),
        "gate",
        &gate.url,
        gate.gate_ca.as_deref().unwrap(),
        &gate.reviewer_token,
    );
    let direct = kubeconfig(
        dir.path(),
        "direct",
        &plane.url,
        &plane.ca_pem,
        &gate.reviewer_token,
    );
    for (name, reviewed) in [
        ("a valid token", token.as_str()),
        ("not a JWT", "not-a-jwt"),
    ] {
        let review = dir.path().join("review.json");
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                          "spec": {"token": reviewed, "audiences": ["vault"]}});
        std::fs::write(&review, body.to_string()).unwrap();
        let review = review.display().to_string();
        let mut answers = Vec::new();
        for config in [&through_gate, &direct] {
            let out = plane
                .kubectl_with(
                    config,
                    &[
                        "create",
                        "--raw",
                        "/apis/authentication.k8s.io/v1/tokenreviews",
                        "-f",
                        &review,
                    ],
                )
                .await;
            let answer: Value = serde_json::from_str(&out).expect("kubectl prints the TokenReview");
            answers.push(answer["status"].clone());
        }
        assert_eq!(
            answers[0], answers[1],
            "{name}: tokengate, then the API server"
        );
    }
}
