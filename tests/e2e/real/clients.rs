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

/// `bao write auth/kubernetes/login` through tokengate and straight at the API server, the
/// same role on both: the same logins succeed and fail, and repeated logins with one token
/// cost the API server one TokenReview through tokengate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_logs_in_through_tokengate_as_against_the_api_server() {
    use crate::bao::Bao;
    let gate = real_https_gate(&[]).await;
    let plane = gate.plane;
    plane.service_account("openbao", "web").await;
    let pod = plane.pod("openbao", "web-0", "web").await;
    let web = plane
        .token("openbao", "web", &["vault"], Some(("web-0", &pod)), 3600)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (gate_dir, direct_dir) = (dir.path().join("gate"), dir.path().join("direct"));
    std::fs::create_dir_all(&gate_dir).unwrap();
    std::fs::create_dir_all(&direct_dir).unwrap();
    let gate_ca = dir.path().join("gate-ca.pem");
    std::fs::write(&gate_ca, gate.gate_ca.as_deref().unwrap()).unwrap();
    let cluster_ca = dir.path().join("cluster-ca.pem");
    std::fs::write(&cluster_ca, &plane.ca_pem).unwrap();
    let through_gate = Bao::start(&gate_dir).await;
    through_gate
        .kubernetes_auth(&gate.url, &gate_ca, &gate.reviewer_token, "openbao")
        .await;
    let direct = Bao::start(&direct_dir).await;
    direct
        .kubernetes_auth(&plane.url, &cluster_ca, &gate.reviewer_token, "openbao")
        .await;

    // The reviewer's own token is authenticated once, on the gate's first review.
    gate.review("not-a-jwt", &["vault"]).await;
    let before = gate.upstream_reviews().await;
    for _ in 0..3 {
        let ours = through_gate
            .login("web", &web)
            .await
            .expect("web logs in through tokengate");
        let theirs = direct
            .login("web", &web)
            .await
            .expect("web logs in at the API server");
        for field in [
            "service_account_name",
            "service_account_namespace",
            "service_account_uid",
            "role",
        ] {
            assert_eq!(
                ours["metadata"][field], theirs["metadata"][field],
                "{field}"
            );
        }
    }
    assert_eq!(
        gate.upstream_reviews().await - before,
        1,
        "three logins with one token are one TokenReview at the API server"
    );

    // A token whose pod is gone: both refuse (OpenBao says only "permission denied").
    let other = plane.pod("openbao", "web-1", "web").await;
    let orphan = plane
        .token("openbao", "web", &["vault"], Some(("web-1", &other)), 3600)
        .await;
    plane.delete_pod("openbao", "web-1").await;
    for bao in [&through_gate, &direct] {
        let err = bao
            .login("web", &orphan)
            .await
            .expect_err("a token of a deleted pod is refused");
        assert!(err.contains("Code: 403"), "{err}");
    }
}

/// The API server's own webhook token authenticator (`tests/kube/cmd/webhook-client`, on
/// `k8s.io/apiserver`'s `token/webhook`), pointed at tokengate in both TokenReview
/// versions and at the API server: the same tokens get the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_webhook_authenticator_gets_the_same_answers_through_tokengate() {
    let gate = real_https_gate(&[]).await;
    let plane = gate.plane;
    plane.service_account("webhook", "web").await;
    let pod = plane.pod("webhook", "web-0", "web").await;
    let valid = plane
        .token("webhook", "web", &["vault"], Some(("web-0", &pod)), 3600)
        .await;
    let other = plane.token("webhook", "web", &["other"], None, 3600).await;
    let tokens = format!("{valid}\n{other}\nnot-a-jwt\n");
    let dir = tempfile::tempdir().unwrap();
    let run = async |config: &std::path::Path, version: &str| -> Vec<Value> {
        let lines = crate::support::json_lines(
            tokio::process::Command::new(plane.bin.join("webhook-client"))
                .arg("--kubeconfig")
                .arg(config)
                .args(["--version", version, "--audiences", "vault"]),
            &tokens,
            "webhook-client (scripts/kube-apiserver builds it)",
        )
        .await;
        assert_eq!(lines.len(), 3, "{lines:?}");
        lines
    };
    // The API server serves TokenReview in v1 only (v1beta1 went in 1.22).
    let path = |version: &str| format!("/apis/authentication.k8s.io/{version}/tokenreviews");
    let direct = kubeconfig(
        dir.path(),
        "direct",
        &format!("{}{}", plane.url, path("v1")),
        &plane.ca_pem,
        &gate.reviewer_token,
    );
    let expected = run(&direct, "v1").await;
    assert_eq!(expected[0]["authenticated"], true, "{expected:?}");
    assert_eq!(expected[0]["username"], "system:serviceaccount:webhook:web");
    for version in ["v1", "v1beta1"] {
        let through_gate = kubeconfig(
            dir.path(),
            &format!("gate-{version}"),
            &format!("{}{}", gate.url, path(version)),
            gate.gate_ca.as_deref().unwrap(),
            &gate.reviewer_token,
        );
        let answers = run(&through_gate, version).await;
        assert_eq!(
            answers, expected,
            "{version} through tokengate, v1 at the API server"
        );
    }
}
