//! Requests, not only tokens: the same TokenReview request, sent to the real API server
//! and to tokengate, gets the same answer (status and `Status` message); the caller's
//! `Authorization` header is read as the API server reads it.

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};

use super::*;
use crate::support::authenticated;

/// Sends `body` to `path` with these `Authorization` values (in order), at `base`
/// trusting `ca`; the status and the answer as JSON.
async fn send(
    base: &str,
    ca: &str,
    path: &str,
    authorizations: &[&str],
    body: &Value,
) -> (u16, Value) {
    let mut request =
        http::Request::post(format!("{base}{path}")).header(CONTENT_TYPE, "application/json");
    for a in authorizations {
        request = request.header(AUTHORIZATION, *a);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let response = crate::support::client_trusting(ca)
        .request(request)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_as_the_real_api_server_answers_them() {
    let gate = real_gate(&[]).await;
    let plane = gate.plane;
    plane.service_account("requests", "web").await;
    let token = plane.token("requests", "web", &["vault"], None, 3600).await;
    let caller = format!("Bearer {}", gate.reviewer_token);
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": token, "audiences": ["vault"]}});
    let mut namespaced_body = review.clone();
    namespaced_body["metadata"] = json!({"namespace": "requests"});
    let cases: [(&str, &str, Vec<&str>, &Value); 4] = [
        ("a plain review", PATH, vec![&caller], &review),
        (
            "metadata.namespace set",
            PATH,
            vec![&caller],
            &namespaced_body,
        ),
        (
            "a namespaced URL",
            "/apis/authentication.k8s.io/v1/namespaces/requests/tokenreviews",
            vec![&caller],
            &review,
        ),
        (
            "two Authorization headers, the first the caller's",
            PATH,
            vec![&caller, "Bearer not-a-token"],
            &review,
        ),
    ];
    for (name, path, authorizations, body) in cases {
        let (real, real_answer) =
            send(&plane.url, &plane.ca_pem, path, &authorizations, body).await;
        let (ours, our_answer) = send(&gate.url, &plane.ca_pem, path, &authorizations, body).await;
        assert_eq!(
            ours, real,
            "{name}: status\n API server: {real_answer}\n tokengate: {our_answer}"
        );
        if real == 201 {
            assert_eq!(
                authenticated(&our_answer),
                authenticated(&real_answer),
                "{name}"
            );
        } else {
            assert_eq!(our_answer["message"], real_answer["message"], "{name}");
            assert_eq!(our_answer["reason"], real_answer["reason"], "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_header_the_api_server_reads_no_token_from_is_refused() {
    let gate = real_gate(&[]).await;
    let plane = gate.plane;
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": "not-a-jwt"}});
    let reviewer = &gate.reviewer_token;
    for authorization in [
        format!("Bearer  {reviewer}"),
        format!("Bearer\t{reviewer}"),
        format!("Bearer not-a-token {reviewer}"),
    ] {
        // The API server reads no token (or another one) and refuses: 403 as
        // system:anonymous (its anonymous auth is on), or 401 for the token it read.
        let (real, answer) =
            send(&plane.url, &plane.ca_pem, PATH, &[&authorization], &review).await;
        assert!(
            matches!(real, 401 | 403),
            "{authorization:?}: {real} {answer}"
        );
        let (ours, answer) = send(&gate.url, &plane.ca_pem, PATH, &[&authorization], &review).await;
        assert_eq!(ours, 401, "{authorization:?}: {answer}");
    }
    // The first of two headers is the one read.
    let (ours, answer) = send(
        &gate.url,
        &plane.ca_pem,
        PATH,
        &["Bearer not-a-token", &format!("Bearer {reviewer}")],
        &review,
    )
    .await;
    assert_eq!(ours, 401, "{answer}");
}
