//! Real clients nobody here wrote, against the gate: kubectl and the Python `kubernetes`
//! client, each posting a TokenReview to the gate as it would to an API server.

use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::*;

/// A kubeconfig that points a client at the gate with the reviewer's credential.
fn kubeconfig(gate: &TestGate) -> std::path::PathBuf {
    let path = gate.files().join("gate.kubeconfig");
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD
        .encode(gate.gate_ca.as_deref().expect("an HTTPS gate"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gate\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: gate\n  context:\n    cluster: gate\n    user: reviewer\ncurrent-context: gate\nusers:\n- name: reviewer\n  user:\n    token: {}\n",
        gate.url,
        gate.sim.reviewer_token()
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().await.unwrap_or_else(|e| {
        panic!(
            "{what} could not be started ({e}); run the README's test command, which installs it"
        )
    });
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_raw_token_review_gets_the_api_servers_answer() {
    // kubectl sends no bearer token over plain http, so the gate serves HTTPS here.
    let gate = spawn_https_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let review = gate.files().join("review.json");
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    std::fs::write(&review, body.to_string()).unwrap();
    let out = run(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig(&gate))
            .args([
                "create",
                "--raw",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "-f",
            ])
            .arg(&review),
        "kubectl",
    )
    .await;
    let answer: Value = serde_json::from_str(&out).expect("kubectl prints the TokenReview");
    assert_eq!(answer["kind"], "TokenReview");
    assert_eq!(answer["status"]["authenticated"], true, "{answer}");
    assert_eq!(
        answer["status"]["user"]["username"],
        "system:serviceaccount:apps:web"
    );
}

const PYTHON_CLIENT: &str = r#"
import json, sys
from kubernetes import client
cfg = client.Configuration()
cfg.host = sys.argv[1]
cfg.api_key = {"authorization": "Bearer " + sys.argv[2]}
api = client.AuthenticationV1Api(client.ApiClient(cfg))
for token, audiences in json.loads(sys.stdin.read()):
    spec = client.V1TokenReviewSpec(token=token, audiences=audiences or None)
    review = api.create_token_review(client.V1TokenReview(spec=spec))
    print(json.dumps(client.ApiClient(cfg).sanitize_for_serialization(review.status)))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kubernetes_client_create_token_review_works_against_the_gate() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let input = json!([[token, null], [token, ["payments"]]]).to_string();
    let lines = json_lines(
        Command::new("python3").args(["-c", PYTHON_CLIENT, &gate.url, &gate.sim.reviewer_token()]),
        &input,
        "the Python kubernetes client (the README's test command installs it)",
    )
    .await;
    assert_eq!(lines[0]["authenticated"], true, "{}", lines[0]);
    assert_eq!(
        lines[0]["user"]["username"],
        "system:serviceaccount:apps:web"
    );
    // Absent, as the API server writes a false `authenticated`: the client reads None.
    assert_eq!(lines[1]["authenticated"], Value::Null, "{}", lines[1]);
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains(r#"["payments"]"#)
    );
}
