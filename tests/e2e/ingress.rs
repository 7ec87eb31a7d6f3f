//! The `/auth` ingress hook over a real socket, as nginx, Traefik and Envoy call it.

use http::{Method, StatusCode};
use tokengate_sim::Failure;

use crate::support::*;

#[tokio::test]
async fn a_valid_token_gets_200_and_the_identity_in_authenticating_proxy_headers() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let (status, h, _) = gate.call(Method::GET, "/auth", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["x-remote-user"], "system:serviceaccount:apps:web");
    assert!(!h["x-remote-uid"].is_empty());
    let groups: Vec<_> = h
        .get_all("x-remote-group")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ]
    );
    assert_eq!(
        h["x-remote-extra-authentication.kubernetes.io%2fpod-name"],
        "web-0"
    );
    assert!(
        h["x-remote-extra-authentication.kubernetes.io%2fcredential-id"]
            .to_str()
            .unwrap()
            .starts_with("JTI=")
    );
}

#[tokio::test]
async fn any_method_and_any_path_under_auth_is_the_hook_and_answers_from_the_cache() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["api"]);
    let before = gate.upstream_calls();
    for (method, path) in [
        (Method::GET, "/auth?audience=api"),
        (Method::POST, "/auth/orders/42?audience=api"),
        (
            Method::DELETE,
            "/auth/orders/42?audience=other&audience=api",
        ),
        (Method::PUT, "/auth/?audience=api"),
    ] {
        let (status, h, _) = gate.call(method.clone(), path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}");
        assert_eq!(h["x-remote-user"], "system:serviceaccount:apps:web");
    }
    // Two audience sets were asked: ["api"] and ["other", "api"].
    assert_eq!(gate.upstream_calls() - before, 2);
}

#[tokio::test]
async fn missing_and_invalid_tokens_get_an_rfc_6750_challenge() {
    let gate = spawn_gate(&[]).await;
    let (status, h, _) = gate.call(Method::GET, "/auth", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], r#"Bearer realm="tokengate""#);

    let token = gate.workload_token("apps", "web", &["vault"]);
    let (status, h, body) = gate
        .call(Method::GET, "/auth?audience=api", Some(&token))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h["www-authenticate"],
        r#"Bearer realm="tokengate", error="invalid_token", error_description="[invalid bearer token, token audiences ['vault'] is invalid for the target audiences ['api']]""#
    );
    assert!(body.contains(r#"["vault"]"#), "{body}");
    assert!(!body.contains(&token) && !h["www-authenticate"].to_str().unwrap().contains(&token));

    let (status, h, _) = gate.call(Method::GET, "/auth", Some("garbage")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"error="invalid_token""#)
    );
}

#[tokio::test]
async fn a_valid_token_outside_the_allow_list_gets_403() {
    let gate = spawn_gate(&[("TOKENGATE_AUTH_NAMESPACES", "payments")]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let (status, _, body) = gate.call(Method::GET, "/auth", Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains("system:serviceaccount:apps:web is authenticated but not allowed here"),
        "{body}"
    );
    let token = gate.workload_token("payments", "billing", &["vault"]);
    assert_eq!(
        gate.call(Method::GET, "/auth", Some(&token)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_undecidable_token_gets_503_never_200() {
    let gate = spawn_gate(&[("TOKENGATE_UPSTREAM_TIMEOUT", "1s")]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    gate.sim.fail_next(10, Failure::Hang);
    let (status, h, _) = gate.call(Method::GET, "/auth", Some(&token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.get("x-remote-user").is_none());
}

#[tokio::test]
async fn a_request_with_two_authorization_headers_is_refused_with_400() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    for pair in [
        [format!("Bearer {token}"), "Bearer not-a-token".to_string()],
        ["Bearer not-a-token".to_string(), format!("Bearer {token}")],
        [format!("Bearer {token}"), format!("Bearer {token}")],
    ] {
        let mut request = http::Request::get(format!("{}/auth", gate.url));
        for value in &pair {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = plain_client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get("x-remote-user").is_none());
    }
}
