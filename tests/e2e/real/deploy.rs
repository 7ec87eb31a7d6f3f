//! `deploy/` and RBAC against the real API server: the manifests pass its server-side
//! validation, and `access.mode = "subjectaccessreview"` lets in exactly the callers the
//! API server itself would let create TokenReviews, refusing the others in its words.

use http::StatusCode;
use serde_json::{Value, json};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_dry_run_server_accepts_deploy() {
    let plane = control_plane().await;
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let out = plane
        .kubectl(&["apply", "--dry-run=server", "-k", deploy])
        .await;
    for object in [
        "namespace/tokengate",
        "serviceaccount/tokengate",
        "configmap/tokengate-config",
        "deployment.apps/tokengate",
        "service/tokengate",
        "poddisruptionbudget.policy/tokengate",
        "networkpolicy.networking.k8s.io/tokengate",
    ] {
        assert!(out.contains(object), "{object} not applied:\n{out}");
    }
}

/// POSTs a TokenReview of `token` to `base` as `caller`; the status and the answer.
async fn review_as(base: &str, ca: &str, caller: &str, token: &str) -> (StatusCode, Value) {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": token, "audiences": ["vault"]}});
    crate::support::post_with(
        &crate::support::client_trusting(ca),
        &format!("{base}/apis/authentication.k8s.io/v1/tokenreviews"),
        caller,
        body.to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_access_review_mode_follows_the_api_servers_rbac_in_its_words() {
    let gate = real_gate(&[("TOKENGATE_ACCESS_MODE", "subjectaccessreview")]).await;
    let plane = gate.plane;
    plane.service_account("sar", "delegate").await;
    plane.service_account("sar", "plain").await;
    plane
        .kubectl(&[
            "create",
            "clusterrolebinding",
            "sar-delegate",
            "--clusterrole=system:auth-delegator",
            "--serviceaccount=sar:delegate",
        ])
        .await;
    plane.service_account("sar", "web").await;
    let token = plane.token("sar", "web", &["vault"], None, 3600).await;
    let delegate = plane.token("sar", "delegate", &[ISSUER], None, 3600).await;
    let plain = plane.token("sar", "plain", &[ISSUER], None, 3600).await;

    for (who, caller, allowed) in [("delegate", &delegate, true), ("plain", &plain, false)] {
        let (real, real_answer) = review_as(&plane.url, &plane.ca_pem, caller, &token).await;
        let (ours, our_answer) = review_as(&gate.url, &plane.ca_pem, caller, &token).await;
        assert_eq!(ours, real, "{who}: {our_answer} vs {real_answer}");
        if allowed {
            assert_eq!(ours, StatusCode::CREATED, "{our_answer}");
            assert!(crate::support::authenticated(&our_answer), "{our_answer}");
        } else {
            assert_eq!(ours, StatusCode::FORBIDDEN);
            assert_eq!(our_answer["message"], real_answer["message"], "{who}");
            assert_eq!(our_answer["reason"], real_answer["reason"], "{who}");
        }
    }
}
