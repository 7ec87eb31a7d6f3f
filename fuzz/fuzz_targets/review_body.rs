//! A TokenReview request body, read as `http::answer_review` reads it: serde into the
//! same shape (`apiVersion`, `kind`, a k8s-openapi `TokenReviewSpec`), the same request
//! checks, the local pipeline for its token and audiences, and the answer serialised in
//! both API versions (the gate `expect`s those serialisations).

#![no_main]

mod common;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use libfuzzer_sys::fuzz_target;

/// `http::ReviewRequest`, which is private: the same fields and attributes.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewRequest {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    spec: TokenReviewSpec,
}

fuzz_target!(|data: &[u8]| {
    if data.len() > tokengate::http::MAX_BODY_BYTES {
        return; // 413 before anything is parsed
    }
    let Ok(request) = serde_json::from_slice::<ReviewRequest>(data) else {
        return;
    };
    let v1beta1 = match request.api_version.as_deref() {
        None | Some("authentication.k8s.io/v1") => false,
        Some("authentication.k8s.io/v1beta1") => true,
        Some(_) => return,
    };
    if request.kind.as_deref().is_some_and(|k| k != "TokenReview") {
        return;
    }
    let token = request.spec.token.clone().unwrap_or_default();
    if token.is_empty() {
        return;
    }
    let default = vec!["vault".to_string()];
    let requested = request
        .spec
        .audiences
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or(&default);
    common::local_checks(&token, requested);
    let review = TokenReview {
        spec: request.spec,
        status: Some(TokenReviewStatus {
            authenticated: Some(false),
            error: Some("rejected".into()),
            ..TokenReviewStatus::default()
        }),
        ..TokenReview::default()
    };
    let bytes = serde_json::to_vec(&review).expect("a TokenReview serialises");
    if v1beta1 {
        let mut value = serde_json::to_value(&review).expect("a TokenReview serialises");
        value["apiVersion"] = "authentication.k8s.io/v1beta1".into();
        serde_json::to_vec(&value).expect("a TokenReview serialises");
    }
    // What was echoed reads back as the same spec.
    let back: TokenReview = serde_json::from_slice(&bytes).expect("the echo reads back");
    assert_eq!(back.spec.token.as_deref(), Some(token.as_str()));
});
