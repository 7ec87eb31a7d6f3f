//! What the benches share: a sim with workloads that hold pod-bound tokens, and verdicts
//! shaped like the API server's answers for them.
//!
//! Each bench compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use tokengate::cache::{Dependency, Uid};
use tokengate::verdict::Verdict;
use tokengate_sim::{MintRequest, Sim};

/// The audience the benches' tokens are minted for and reviewed against.
pub const AUDIENCE: &str = "vault";

/// The TokenReview API version the benches' requests name.
pub const REVIEW_V1: &str = "authentication.k8s.io/v1";

/// Namespaces, service accounts and pods that tokens are minted for: `pods` pods spread
/// over ten namespaces, one service account per namespace.
pub struct Workloads {
    /// (namespace, service account, pod).
    pub pods: Vec<(String, String, String)>,
}

impl Workloads {
    /// Creates `pods` pods (and their service accounts) in `sim`.
    pub fn create(sim: &Sim, pods: usize) -> Workloads {
        let pods = (0..pods)
            .map(|i| {
                let ns = format!("team-{:02}", i % 10);
                let sa = format!("{ns}-app");
                let pod = format!("{sa}-7d9f8c6b5-{i:05}");
                sim.create_service_account(&ns, &sa);
                sim.create_pod(&ns, &pod, &sa);
                (ns, sa, pod)
            })
            .collect();
        Workloads { pods }
    }

    /// `n` fresh pod-bound tokens for [`AUDIENCE`], one hour long, round-robin over the pods.
    pub fn mint(&self, sim: &Sim, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let (ns, sa, pod) = &self.pods[i % self.pods.len()];
                sim.mint(&MintRequest {
                    namespace: ns.clone(),
                    service_account: sa.clone(),
                    audiences: vec![AUDIENCE.to_owned()],
                    expiration_seconds: Some(3600),
                    pod: Some(pod.clone()),
                })
                .expect("the sim mints a token for an existing pod")
            })
            .collect()
    }
}

/// The TokenReview `status` the API server gives for the `i`-th pod-bound token: a
/// service-account user, 3 groups, 3 extras (pod name, pod UID, credential id),
/// audiences `[vault]`. Distinct strings per `i`, as distinct tokens have.
pub fn status_json(i: usize) -> String {
    let ns = format!("team-{:02}", i % 10);
    let sa = format!("{ns}-app");
    let pod = format!("{sa}-7d9f8c6b5-{i:07}");
    let sa_uid = format!("5f0c1a2e-8d3b-4c6a-9e71-{:012x}", i % 10);
    let pod_uid = format!("a3e4b1c9-2f6d-4e8a-b5c7-{i:012x}");
    let jti = format!("0b7e6f3a-91c4-4d2e-8a5f-{i:012x}");
    format!(
        r#"{{"authenticated":true,"user":{{"username":"system:serviceaccount:{ns}:{sa}","uid":"{sa_uid}","groups":["system:serviceaccounts","system:serviceaccounts:{ns}","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["JTI={jti}"],"authentication.kubernetes.io/pod-name":["{pod}"],"authentication.kubernetes.io/pod-uid":["{pod_uid}"]}}}},"audiences":["{AUDIENCE}"]}}"#
    )
}

/// The verdict the gate keeps for the `i`-th token: built from the parsed answer as the
/// pipeline builds it (`review::judge` moves `status.user` and `status.audiences` in), so
/// its allocations are those of a real verdict.
pub fn realistic_verdict(i: usize) -> Arc<Verdict> {
    let status: TokenReviewStatus =
        serde_json::from_str(&status_json(i)).expect("the status template is valid JSON");
    Arc::new(Verdict {
        authenticated: true,
        user: status.user.map(tokengate::verdict::User::from),
        audiences: tokengate::verdict::audiences(status.audiences.unwrap_or_default()),
        error: String::new(),
    })
}

/// The claims of `token` (a sim-minted JWT), decoded without any check.
pub fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("the payload is base64url");
    serde_json::from_slice(&bytes).expect("the payload is JSON")
}

/// `token` re-signed by the sim's own key with its times moved two hours back: a real,
/// correctly signed token of a live pod that expired an hour ago.
pub fn expired_copy(sim: &Sim, token: &str) -> String {
    let mut claims = claims_of(token);
    let shift = 7200;
    for time in ["exp", "iat", "nbf"] {
        let t = claims[time].as_i64().expect("time claims are integers");
        claims[time] = (t - shift).into();
    }
    sim.sign_claims(&claims)
}

/// `token` with its payload changed (a new `jti`, `n`) and its signature kept: what an
/// attacker who holds one real token can make. Passes every claim check; only a signature
/// check (or the API server) rejects it.
pub fn forged_copy(token: &str, n: usize) -> String {
    use base64::Engine as _;
    let mut claims = claims_of(token);
    claims["jti"] = format!("f0f0f0f0-0000-4000-8000-{n:012x}").into();
    let mut parts = token.split('.');
    let (header, _, signature) = (parts.next(), parts.next(), parts.next());
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims).expect("claims serialise"));
    format!(
        "{}.{payload}.{}",
        header.expect("a JWT header"),
        signature.expect("a JWT signature")
    )
}

/// The objects the `i`-th verdict depends on, as `review::dependencies` names them with
/// the revocation watch on: its service account and its pod (UIDs as in [`status_json`]).
pub fn dependencies(i: usize) -> Vec<Dependency> {
    vec![
        Dependency::ServiceAccount(Uid::of(&format!("5f0c1a2e-8d3b-4c6a-9e71-{:012x}", i % 10))),
        Dependency::Pod(Uid::of(&format!("a3e4b1c9-2f6d-4e8a-b5c7-{i:012x}"))),
    ]
}

/// `app` under the gate's middleware stack (`http::with_middleware`, as `http::router`
/// builds it), with the time budget the router gives the dev configuration: its 5 s
/// upstream budget and a second more.
pub fn under_the_gates_middleware(app: axum::Router) -> axum::Router {
    tokengate::http::with_middleware(
        app,
        std::time::Duration::from_secs(6),
        Arc::new(tokengate::metrics::Metrics::new()),
    )
}

/// The least any gate must do for a cached review, with the gate's own functions: read
/// the TokenReview, hash its token with the cache's key, look the verdict up in the
/// gate's cache and write the answer from it. A lower bound: no caller check, no checks
/// of the request's apiVersion, kind and token, no routing among the gate's endpoints,
/// no metrics, all of which the gate also does. Anything but a cached verdict's answer
/// is a 500.
pub fn least_a_gate_must_do(state: Arc<tokengate::AppState>) -> axum::Router {
    use axum::body::Bytes;
    use axum::http::{StatusCode, header};
    axum::Router::new().route(
        "/review",
        axum::routing::post(move |body: Bytes| {
            let reviewer = &state.reviewer;
            let answer = serde_json::from_slice::<tokengate::wire::ReviewRequest<'_>>(&body)
                .ok()
                .and_then(|request| {
                    let token = request.spec.token()?;
                    let audiences = request.spec.audiences.as_deref()?;
                    let cache = reviewer.cache();
                    let key = cache.key(token, audiences, tokengate::cache::Purpose::Review);
                    let verdict = cache.get(&key, reviewer.now())?;
                    Some(tokengate::wire::answer(REVIEW_V1, &request.spec, &verdict))
                });
            async move {
                match answer {
                    Some(body) => (
                        StatusCode::CREATED,
                        [(header::CONTENT_TYPE, "application/json")],
                        body,
                    ),
                    None => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [(header::CONTENT_TYPE, "text/plain")],
                        b"not a cached review".to_vec(),
                    ),
                }
            }
        }),
    )
}
