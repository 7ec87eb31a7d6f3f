//! The same TokenReview sent to the real API server and through tokengate must get the
//! same answer: `authenticated`, `user` (username, uid, groups, extra), `audiences` and
//! `status.error`, byte for byte. Every token is minted here with the API server's own
//! signing key (or forged), over real objects, with a fresh `jti` each (the API server
//! keeps a successful authentication for 10 s, keyed by the token).
//!
//! tokengate is compared with the API server asked for the audiences tokengate sends it:
//! an empty `spec.audiences` means `policy.audiences` at tokengate (here `vault`) and the
//! API server's own audiences at the API server, by design.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::control_plane::SIGNING_KEY;
use super::*;
use crate::jwt::{b64, forge, now};

const NS: &str = "differential";

/// The real objects the tokens name.
struct World {
    account_uid: String,
    pod_uid: String,
    /// A pod that existed and was deleted.
    deleted_pod_uid: String,
    /// The UID a service account had before it was deleted and created again.
    recreated_old_uid: String,
    /// The `kid` the API server publishes for its signing key.
    kid: String,
}

async fn world(plane: &ControlPlane) -> World {
    let account_uid = plane.service_account(NS, "web").await;
    let pod_uid = plane.pod(NS, "web-0", "web").await;
    let deleted_pod_uid = plane.pod(NS, "gone-0", "web").await;
    plane.delete_pod(NS, "gone-0").await;
    let recreated_old_uid = plane.service_account(NS, "recreated").await;
    plane
        .kubectl(&["-n", NS, "delete", "serviceaccount", "recreated"])
        .await;
    plane.service_account(NS, "recreated").await;
    let (_, jwks) = plane.get("/openid/v1/jwks").await;
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    World {
        account_uid,
        pod_uid,
        deleted_pod_uid,
        recreated_old_uid,
        kid,
    }
}

/// The claims a TokenRequest for `differential/web` bound to pod `web-0` carries, for
/// audience `vault`, valid an hour, with a fresh `jti`.
fn claims(w: &World) -> Value {
    let t = now();
    json!({
        "aud": ["vault"], "exp": t + 3600, "iat": t, "nbf": t,
        "iss": ISSUER, "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {
            "namespace": NS,
            "pod": {"name": "web-0", "uid": w.pod_uid},
            "serviceaccount": {"name": "web", "uid": w.account_uid}
        },
        "sub": format!("system:serviceaccount:{NS}:web"),
    })
}

/// Signs `header` and `claims` (as written) with the API server's key under `alg`.
fn sign(alg: Algorithm, header: &Value, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(SIGNING_KEY.as_bytes()).unwrap();
    crate::jwt::sign(&key, alg, &header.to_string(), &claims.to_string())
}

/// Signs exactly these header and claims texts with the API server's key, RS256.
fn sign_text(header: &str, claims: &str) -> String {
    let key = EncodingKey::from_rsa_pem(SIGNING_KEY.as_bytes()).unwrap();
    crate::jwt::sign(&key, Algorithm::RS256, header, claims)
}

/// Signs with the API server's key, RS256, under its `kid`.
fn signed(w: &World, claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        &json!({"alg": "RS256", "kid": w.kid}),
        claims,
    )
}

/// The claims with `change` applied.
fn with(w: &World, change: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims(w);
    change(&mut c);
    c
}

/// One case: a name, a token, and the audiences asked for (`None`: none named).
struct Case {
    name: String,
    token: String,
    audiences: Option<Vec<&'static str>>,
}

fn cases(w: &World) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |name: &str, token: String, audiences: Option<&[&'static str]>| {
        out.push(Case {
            name: name.to_owned(),
            token,
            audiences: audiences.map(<[_]>::to_vec),
        })
    };
    let t = now();
    let requested: [(&str, Option<&[&str]>); 5] = [
        ("none", None),
        ("the token's", Some(&["vault"])),
        ("another", Some(&["other"])),
        ("several", Some(&["other", "vault"])),
        ("the API server's", Some(&[ISSUER])),
    ];
    for (which, audiences) in requested {
        add(
            &format!("pod-bound, audiences {which}"),
            signed(w, &claims(w)),
            audiences,
        );
        let unbound = with(w, |c| {
            c["kubernetes.io"].as_object_mut().unwrap().remove("pod");
        });
        add(
            &format!("unbound, audiences {which}"),
            signed(w, &unbound),
            audiences,
        );
    }
    let vault: Option<&[&str]> = Some(&["vault"]);
    let two = with(w, |c| c["aud"] = json!(["vault", "other"]));
    add(
        "two audiences, one asked",
        signed(w, &two),
        Some(&["other"]),
    );
    let aud_string = with(w, |c| c["aud"] = json!("vault"));
    add("aud as a string", signed(w, &aud_string), vault);

    // Times, around the API server's 60 s leeway.
    for (name, claim, value) in [
        ("expired", "exp", t - 120),
        ("expired within the leeway", "exp", t - 30),
        ("nbf in the future", "nbf", t + 120),
        ("nbf within the leeway", "nbf", t + 30),
        ("iat in the future", "iat", t + 120),
        ("iat within the leeway", "iat", t + 30),
    ] {
        add(
            name,
            signed(w, &with(w, |c| c[claim] = json!(value))),
            vault,
        );
    }
    add(
        "exp 2^53+1",
        signed(w, &with(w, |c| c["exp"] = json!(9_007_199_254_740_993_u64))),
        vault,
    );
    add(
        "exp fractional",
        signed(w, &with(w, |c| c["exp"] = json!(t as f64 + 3600.5))),
        vault,
    );
    for claim in ["exp", "nbf", "iat", "jti"] {
        add(
            &format!("no {claim}"),
            signed(
                w,
                &with(w, |c| {
                    c.as_object_mut().unwrap().remove(claim);
                }),
            ),
            vault,
        );
    }

    // Issuers and signatures.
    add(
        "another issuer",
        signed(w, &with(w, |c| c["iss"] = json!("https://issuer.example"))),
        vault,
    );
    let genuine = signed(w, &claims(w));
    let (message, signature) = genuine.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    add(
        "signature changed",
        format!("{message}.{}", String::from_utf8(flipped).unwrap()),
        vault,
    );
    let other_claims = b64(with(w, |c| {
        c["sub"] = json!("system:serviceaccount:kube-system:admin")
    })
    .to_string());
    let header = message.split('.').next().unwrap();
    add(
        "claims swapped under a signature",
        format!("{header}.{other_claims}.{signature}"),
        vault,
    );
    add("signature removed", format!("{message}."), vault);
    add(
        "signed by another key (ES256)",
        forge(&json!({"alg": "ES256", "kid": w.kid}), &claims(w)),
        vault,
    );
    for (name, alg) in [
        ("RS384", Algorithm::RS384),
        ("RS512", Algorithm::RS512),
        ("PS256", Algorithm::PS256),
    ] {
        let header = json!({"alg": name, "kid": w.kid});
        add(
            &format!("alg {name} with the cluster's key"),
            sign(alg, &header, &claims(w)),
            vault,
        );
    }
    for (name, header) in [
        ("kid empty", json!({"alg": "RS256", "kid": ""})),
        ("kid null", json!({"alg": "RS256", "kid": null})),
        ("kid absent", json!({"alg": "RS256"})),
        (
            "kid unknown",
            json!({"alg": "RS256", "kid": "not-a-published-kid"}),
        ),
    ] {
        add(name, sign(Algorithm::RS256, &header, &claims(w)), vault);
    }
    add(
        "alg none",
        format!(
            "{}.{}.",
            b64(json!({"alg": "none"}).to_string()),
            b64(claims(w).to_string())
        ),
        vault,
    );

    // JSON the JOSE parser may read otherwise than serde_json.
    let header = json!({"alg": "RS256", "kid": w.kid}).to_string();
    let text = claims(w).to_string();
    let dup_exp = text.replacen("\"exp\":", &format!("\"exp\":{},\"exp\":", t - 7200), 1);
    add(
        "duplicate exp, the later valid",
        sign_text(&header, &dup_exp),
        vault,
    );
    let dup_ns = text.replacen(
        "\"namespace\":",
        "\"namespace\":\"kube-system\",\"namespace\":",
        1,
    );
    add("duplicate namespace", sign_text(&header, &dup_ns), vault);
    let dup_alg = format!(r#"{{"alg":"none","alg":"RS256","kid":"{}"}}"#, w.kid);
    add(
        "duplicate alg in the header",
        sign_text(&dup_alg, &text),
        vault,
    );
    let crit = format!(r#"{{"alg":"RS256","kid":"{}","crit":["exp"]}}"#, w.kid);
    add("crit header", sign_text(&crit, &text), vault);
    let hs256 = crate::jwt::sign(
        &EncodingKey::from_secret(include_bytes!("../../fixtures/rsa-test-key.pub.pem")).unwrap(),
        Algorithm::HS256,
        &json!({"alg": "HS256", "kid": w.kid}).to_string(),
        &text,
    );
    add("HS256 keyed with the public key", hs256, vault);
    add(
        "exp with an exponent",
        sign_text(
            &header,
            &text.replacen("\"exp\":", "\"exp\":1e10,\"x\":", 1),
        ),
        vault,
    );

    // Claims of the wrong JSON type.
    for (name, claim, value) in [
        ("exp a string", "exp", json!("soon")),
        ("nbf a bool", "nbf", json!(true)),
        ("iat an object", "iat", json!({})),
        ("aud a number", "aud", json!(5)),
        ("aud with a number", "aud", json!(["vault", 5])),
        ("sub a number", "sub", json!(5)),
        ("iss a number", "iss", json!(5)),
        ("jti a number", "jti", json!(5)),
        ("kubernetes.io a string", "kubernetes.io", json!("x")),
    ] {
        add(name, signed(w, &with(w, |c| c[claim] = value)), vault);
    }
    add(
        "kubernetes.io missing",
        signed(
            w,
            &with(w, |c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            }),
        ),
        vault,
    );
    add(
        "namespace a number",
        signed(w, &with(w, |c| c["kubernetes.io"]["namespace"] = json!(5))),
        vault,
    );
    add(
        "namespace empty",
        signed(w, &with(w, |c| c["kubernetes.io"]["namespace"] = json!(""))),
        vault,
    );
    add(
        "serviceaccount missing",
        signed(
            w,
            &with(w, |c| {
                c["kubernetes.io"]
                    .as_object_mut()
                    .unwrap()
                    .remove("serviceaccount");
            }),
        ),
        vault,
    );
    add(
        "serviceaccount name empty",
        signed(
            w,
            &with(w, |c| {
                c["kubernetes.io"]["serviceaccount"]["name"] = json!("")
            }),
        ),
        vault,
    );
    add(
        "pod uid a number",
        signed(w, &with(w, |c| c["kubernetes.io"]["pod"]["uid"] = json!(5))),
        vault,
    );
    add(
        "sub names another account",
        signed(
            w,
            &with(w, |c| {
                c["sub"] = json!(format!("system:serviceaccount:{NS}:other"))
            }),
        ),
        vault,
    );

    // The objects the claims name.
    add(
        "service account UID mismatch",
        signed(
            w,
            &with(w, |c| {
                c["kubernetes.io"]["serviceaccount"]["uid"] =
                    json!("00000000-0000-0000-0000-000000000001")
            }),
        ),
        vault,
    );
    add(
        "pod UID mismatch",
        signed(
            w,
            &with(w, |c| {
                c["kubernetes.io"]["pod"]["uid"] = json!("00000000-0000-0000-0000-000000000002")
            }),
        ),
        vault,
    );
    add(
        "deleted pod",
        signed(
            w,
            &with(w, |c| {
                c["kubernetes.io"]["pod"] = json!({"name": "gone-0", "uid": w.deleted_pod_uid})
            }),
        ),
        vault,
    );
    add(
        "service account deleted and recreated",
        signed(
            w,
            &with(w, |c| {
                c["kubernetes.io"]["serviceaccount"] =
                    json!({"name": "recreated", "uid": w.recreated_old_uid});
                c["sub"] = json!(format!("system:serviceaccount:{NS}:recreated"));
                c["kubernetes.io"].as_object_mut().unwrap().remove("pod");
            }),
        ),
        vault,
    );
    add(
        "service account that does not exist",
        signed(
            w,
            &with(w, |c| {
                c["kubernetes.io"]["serviceaccount"]["name"] = json!("nobody");
                c["sub"] = json!(format!("system:serviceaccount:{NS}:nobody"));
            }),
        ),
        vault,
    );

    // Not service-account JWTs.
    add("not a JWT", "not-a-jwt".into(), vault);
    add(
        "not a JWT, API audience",
        "not-a-jwt".into(),
        Some(&[ISSUER]),
    );
    add("two segments", "abc.def".into(), vault);
    add(
        "claims not JSON",
        format!(
            "{}.{}.{}",
            b64(json!({"alg": "RS256"}).to_string()),
            b64("{"),
            b64("sig")
        ),
        vault,
    );

    // What go-jose reads, and what it leaves alone.
    add(
        "aud null",
        signed(w, &with(w, |c| c["aud"] = Value::Null)),
        vault,
    );
    for (name, header) in [
        ("alg absent", json!({"kid": w.kid})),
        ("alg null", json!({"alg": null, "kid": w.kid})),
        (
            "crit empty",
            json!({"alg": "RS256", "kid": w.kid, "crit": []}),
        ),
        (
            "crit null",
            json!({"alg": "RS256", "kid": w.kid, "crit": null}),
        ),
        (
            "crit a string",
            json!({"alg": "RS256", "kid": w.kid, "crit": "b64"}),
        ),
        (
            "crit b64, the one go-jose implements",
            json!({"alg": "RS256", "kid": w.kid, "crit": ["b64"]}),
        ),
    ] {
        add(name, sign(Algorithm::RS256, &header, &claims(w)), vault);
    }
    // A key twice in what go-jose decodes, and in what it skips unread.
    let edited = |edits: &[(&str, &str)]| {
        let mut text = claims(w).to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "{from}");
            text = text.replacen(from, to, 1);
        }
        sign_text(&header, &text)
    };
    add(
        "duplicate key inside an unknown claim",
        edited(&[("\"exp\":", r#""extra":{"a":1,"a":2},"exp":"#)]),
        vault,
    );
    add(
        "duplicate key inside an unknown field of kubernetes.io",
        edited(&[("\"namespace\":", r#""extra":{"a":1,"a":2},"namespace":"#)]),
        vault,
    );
    add(
        "duplicate key inside aud",
        edited(&[("\"aud\":[", r#""aud":[{"a":1,"a":2},"#)]),
        vault,
    );
    add(
        "duplicate key in kubernetes.io, then one in sub",
        edited(&[
            ("\"namespace\":", r#""uid":"u","uid":"v","namespace":"#),
            ("\"sub\":", r#""sub":"x","sub":"#),
        ]),
        vault,
    );
    out
}

/// The parts of a TokenReview answer that must agree.
fn answer(review: &Value) -> Value {
    let status = &review["status"];
    let user = &status["user"];
    json!({
        "authenticated": status["authenticated"].as_bool().unwrap_or(false),
        "username": user["username"], "uid": user["uid"],
        "groups": user["groups"], "extra": user["extra"],
        "audiences": status["audiences"],
        "error": status["error"].as_str().unwrap_or_default(),
    })
}

/// Sends every case to the API server and through `gate`; the differences, described.
async fn differences(gate: &RealGate, cases: &[Case]) -> Vec<String> {
    let mut differences = Vec::new();
    for case in cases {
        let sent: Vec<&str> = case.audiences.clone().unwrap_or(vec!["vault"]);
        let direct = gate.plane.review(&case.token, &sent).await;
        let (status, through) = match &case.audiences {
            Some(a) => gate.review(&case.token, a).await,
            None => gate.review_naming_no_audience(&case.token).await,
        };
        assert_eq!(
            status,
            http::StatusCode::CREATED,
            "{}: {through}",
            case.name
        );
        let (expected, got) = (answer(&direct), answer(&through));
        if expected != got {
            differences.push(format!(
                "{}:\n  API server: {expected}\n  tokengate:  {got}",
                case.name
            ));
        }
    }
    differences
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokengate_answers_every_token_as_the_real_api_server_does() {
    let gate = real_gate(&[]).await;
    let w = world(gate.plane).await;
    let cases = cases(&w);
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let differences = differences(&gate, &cases).await;
    assert!(
        differences.is_empty(),
        "{} of {} cases differ:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}

/// A legacy token of `NS/legacy` stored in Secret `secret`, signed with the API server's
/// key, with `claims` changed by `change`; the Secret holds the token as the token
/// controller would have written it (there is no controller here).
async fn legacy_token(
    plane: &ControlPlane,
    secret: &str,
    uid: &str,
    change: impl FnOnce(&mut Value),
) -> String {
    let mut claims = json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": NS,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": "legacy",
        "kubernetes.io/serviceaccount/service-account.uid": uid,
        "sub": format!("system:serviceaccount:{NS}:legacy"),
    });
    change(&mut claims);
    let token = sign(Algorithm::RS256, &json!({"alg": "RS256"}), &claims);
    let manifest = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": secret, "namespace": NS,
                     "annotations": {"kubernetes.io/service-account.name": "legacy",
                                     "kubernetes.io/service-account.uid": uid}},
        "stringData": {"token": token},
    });
    let (status, answer) = plane
        .post(&format!("/api/v1/namespaces/{NS}/secrets"), &manifest)
        .await;
    assert_eq!(status, 201, "{answer}");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_tokens_are_answered_as_the_real_api_server_answers_them_when_allowed() {
    let gate = real_gate(&[("TOKENGATE_POLICY_ALLOW_LEGACY_TOKENS", "true")]).await;
    let plane = gate.plane;
    let uid = plane.service_account(NS, "legacy").await;
    let valid = legacy_token(plane, "legacy-token", &uid, |_| {}).await;
    let other_sub = legacy_token(plane, "legacy-sub", &uid, |c| {
        c["sub"] = json!(format!("system:serviceaccount:{NS}:web"));
    })
    .await;
    let deleted = legacy_token(plane, "legacy-gone", &uid, |_| {}).await;
    plane
        .kubectl(&["-n", NS, "delete", "secret", "legacy-gone"])
        .await;
    let not_stored = sign(
        Algorithm::RS256,
        &json!({"alg": "RS256"}),
        &json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": NS,
            "kubernetes.io/serviceaccount/secret.name": "legacy-token",
            "kubernetes.io/serviceaccount/service-account.name": "legacy",
            "kubernetes.io/serviceaccount/service-account.uid": uid,
            "sub": format!("system:serviceaccount:{NS}:legacy"), "jti": "another copy",
        }),
    );
    let case = |name: &str, token: &str, audiences: Option<Vec<&'static str>>| Case {
        name: name.to_owned(),
        token: token.to_owned(),
        audiences,
    };
    let cases = [
        case(
            "legacy, for the API server's audience",
            &valid,
            Some(vec![ISSUER]),
        ),
        case("legacy, for vault", &valid, Some(vec!["vault"])),
        case("legacy, no audience named", &valid, None),
        case(
            "legacy, sub of another account",
            &other_sub,
            Some(vec![ISSUER]),
        ),
        case("legacy, its Secret deleted", &deleted, Some(vec![ISSUER])),
        case(
            "legacy, not the Secret's copy",
            &not_stored,
            Some(vec![ISSUER]),
        ),
    ];
    let differences = differences(&gate, &cases).await;
    assert!(
        differences.is_empty(),
        "{} of {} cases differ:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
    // The Secret made here is one the API server accepts a legacy token from.
    let (_, review) = gate.review(&valid, &[ISSUER]).await;
    assert_eq!(
        review["status"]["user"]["username"],
        format!("system:serviceaccount:{NS}:legacy"),
        "{review}"
    );
}
