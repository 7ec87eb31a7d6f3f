//! The bad-input catalog: hostile tokens, request bodies and `Authorization` headers, each
//! with the one outcome it must get from a real gate over loopback. Every case ends in a
//! local rejection with a precise reason, a 4xx (a Kubernetes `Status` on the TokenReview
//! endpoints), or a forward to the API server for a stated reason; never a panic, never a
//! 5xx, never `authenticated: true`. The sim's TokenReview counter proves which cases
//! reached the API server.
//!
//! Requests are written by hand on a raw TCP connection, so that a case can carry bytes
//! no HTTP client would send (invalid UTF-8, NUL, a 1 MB header, an unframed body).

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::jwt::{DUMMY_SIGNATURE, b64, forge, unsigned};
use crate::support::*;

/// What the gate is sent.
enum Input {
    /// A v1 TokenReview of this token, as the reviewer; `None` asks for the gate's own
    /// audience (`vault`).
    Review(String, Option<Vec<String>>),
    /// These bytes as the body of `POST /review`, as the reviewer.
    Body(Vec<u8>),
    /// A whole request, byte for byte (for framing no client would produce).
    Raw(Vec<u8>),
    /// `GET` of this path (`/auth…`) with this raw `Authorization` header value.
    Auth(String, Vec<u8>),
}

/// What the gate must answer.
#[derive(Clone)]
enum Expect {
    /// 201, not authenticated, `status.error` is exactly the text; the API server is
    /// not asked.
    Rejected(String),
    /// The token goes to the API server (once), which refuses it; the text says why the
    /// gate cannot decide it alone.
    Forwarded(&'static str),
    /// This HTTP status with a Kubernetes `Status` whose message contains the text; the
    /// API server is not asked.
    Status(u16, &'static str),
    /// `/auth` or the HTTP layer: this status, and the text in the body or in
    /// `WWW-Authenticate`; never an identity; the API server is not asked.
    Http(u16, String),
}

struct Case {
    name: String,
    input: Input,
    expect: Expect,
}

fn case(name: impl Into<String>, input: Input, expect: Expect) -> Case {
    Case {
        name: name.into(),
        input,
        expect,
    }
}

/// Rejected with exactly this `status.error`.
fn rejected(error: impl Into<String>) -> Expect {
    Expect::Rejected(error.into())
}

/// Rejected as the API server's service-account authenticator refuses for `reason`.
fn refused(reason: &str) -> Expect {
    rejected(format!("[invalid bearer token, {reason}]"))
}

fn review(token: impl Into<String>) -> Input {
    Input::Review(token.into(), None)
}

fn review_for(token: impl Into<String>, audiences: &[&str]) -> Input {
    Input::Review(
        token.into(),
        Some(audiences.iter().map(|a| a.to_string()).collect()),
    )
}

/// The API server's words for a token no authenticator could read.
const UNREADABLE: &str = "invalid bearer token";
/// The API server's words for a signature that does not verify.
const BAD_SIGNATURE: &str =
    "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]";
/// The API server's words for a `kid` that names no published key.
const NO_KEYS: &str = "[invalid bearer token, invalid signature, no keys found]";
/// go-jose's words for a time claim that is not a number.
const NOT_A_DATE: &str = "go-jose/go-jose/jwt: expected number value to unmarshal NumericDate";
/// go-jose's words for an `aud` that is neither a string nor an array of them.
const NOT_AN_AUDIENCE: &str =
    "go-jose/go-jose/jwt: expected string or array value to unmarshal to Audience";

/// The facts the cases are built from: a real service account, the sim's issuer and kid.
struct World {
    iss: String,
    kid: String,
    uid: String,
    t: i64,
}

impl World {
    /// Claims as the API server lays them out for `apps/web`, valid for an hour, `vault`.
    fn claims(&self) -> Value {
        let (iat, exp) = (self.t - 10, self.t + 3600);
        crate::jwt::claims(&self.iss, "apps", "web", &self.uid, &["vault"], iat, exp)
    }

    fn with(&self, key: &str, value: Value) -> Value {
        let mut c = self.claims();
        c[key] = value;
        c
    }

    fn without(&self, key: &str) -> Value {
        let mut c = self.claims();
        c.as_object_mut().unwrap().remove(key);
        c
    }

    fn header(&self) -> String {
        format!(r#"{{"alg":"ES256","kid":"{}"}}"#, self.kid)
    }

    /// The sim's header over exactly this claims text, with a dummy signature: whatever
    /// passes the parser and the local checks dies at the signature check.
    fn text(&self, claims: &str) -> String {
        unsigned(self.header(), claims)
    }

    fn unsigned(&self, claims: &Value) -> String {
        self.text(&claims.to_string())
    }

    /// The claims text of the valid claims with `from` replaced by `to` (for duplicate
    /// keys and number spellings serde_json would not write).
    fn edited(&self, from: &str, to: &str) -> String {
        let text = self.claims().to_string();
        assert!(text.contains(from), "{from} is not in {text}");
        text.replacen(from, to, 1)
    }
}

/// The forger's public key as a JWK, for the `jwk` header.
fn attacker_jwk() -> Value {
    json!({"kty": "EC", "crv": "P-256", "x": b64([1u8; 32]), "y": b64([2u8; 32]), "kid": "attacker"})
}

/// `n` levels of arrays, closed or not.
fn nested(n: usize, closed: bool) -> String {
    let mut s = "[".repeat(n);
    if closed {
        s.push_str(&"]".repeat(n));
    }
    s
}

fn token_cases(gate: &TestGate, w: &World) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &str, input: Input, expect: Expect| cases.push(case(name, input, expect));
    let claims = w.claims().to_string();
    let kid = &w.kid;
    let iss = &w.iss;
    let t = w.t;
    // Not a service-account token of ours: nothing the API server could accept for
    // `vault` (the why is the gate's debug log's).
    let foreign = |_why: &str| rejected(UNREADABLE);
    // Any algorithm is read; the keys refuse the ones they are not published for.
    let not_allowed = |_alg: &str| rejected(BAD_SIGNATURE);

    // Algorithms: only RS*/ES* as the API server signs; anything else dies in the parser.
    for alg in [
        "none",
        "None",
        "NONE",
        "nOnE",
        "HS256",
        "HS384",
        "HS512",
        "es256",
        "rs256",
        "PS256",
        "EdDSA",
        "ES256 ",
        " ES256",
        "ES256\u{0}",
        "",
        "RS1",
        "A128KW",
        "dir",
    ] {
        let header = json!({"alg": alg, "kid": kid}).to_string();
        add(
            &format!("alg {alg:?}"),
            review(unsigned(&header, &claims)),
            not_allowed(alg),
        );
    }
    // alg none with the empty signature it comes with.
    add(
        "alg none, empty signature",
        review(format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims))),
        not_allowed("none"),
    );
    // HS256 keyed with public bytes an attacker can read (the CA): refused before any key.
    let hs256 = crate::jwt::sign(
        &EncodingKey::from_secret(gate.sim.ca_pem().as_bytes()).unwrap(),
        Algorithm::HS256,
        &json!({"alg": "HS256", "kid": kid}).to_string(),
        &claims,
    );
    add(
        "HS256 keyed with the CA's public PEM",
        review(hs256),
        not_allowed("HS256"),
    );
    for (name, alg) in [
        ("alg a number", json!(256)),
        ("alg an array", json!(["ES256"])),
        ("alg an object", json!({"name": "ES256"})),
    ] {
        let header = json!({"alg": alg, "kid": kid}).to_string();
        add(
            name,
            review(unsigned(&header, &claims)),
            rejected(UNREADABLE),
        );
    }
    // go-jose skips a null header value: no `alg` is "", which no key verifies.
    for (name, header) in [
        ("no alg", json!({"kid": kid})),
        ("alg null", json!({"alg": null, "kid": kid})),
    ] {
        add(
            name,
            review(unsigned(header.to_string(), &claims)),
            rejected(BAD_SIGNATURE),
        );
    }
    // Allowed names, but not the algorithm the named key is published for.
    for alg in ["RS256", "RS384", "RS512", "ES384"] {
        let header = json!({"alg": alg, "kid": kid}).to_string();
        add(
            &format!("{alg} claimed for the sim's P-256 key"),
            review(unsigned(&header, &claims)),
            rejected(BAD_SIGNATURE),
        );
    }
    add(
        "ES256 over a dummy signature",
        review(w.unsigned(&w.claims())),
        rejected(BAD_SIGNATURE),
    );
    add(
        "no kid: every key is tried",
        review(unsigned(r#"{"alg":"ES256"}"#, &claims)),
        rejected(BAD_SIGNATURE),
    );

    // kid: looked up among the published keys, never used as a path, URL or query.
    for bad_kid in [
        "../../etc/passwd",
        "../../../../../../dev/zero",
        "/dev/random",
        "file:///etc/shadow",
        "http://169.254.169.254/latest/meta-data/",
        "' OR '1'='1",
        "%00",
        "kid\"with\\quotes",
    ] {
        let header = json!({"alg": "ES256", "kid": bad_kid});
        add(
            &format!("kid {bad_kid:?}"),
            review(forge(&header, &w.claims())),
            rejected(NO_KEYS),
        );
    }
    // go-jose reads an empty kid as none: every key is tried, and none verifies.
    add(
        "kid \"\"",
        review(forge(&json!({"alg": "ES256", "kid": ""}), &w.claims())),
        rejected(BAD_SIGNATURE),
    );
    add(
        "kid with a NUL",
        review(forge(
            &json!({"alg": "ES256", "kid": "a\u{0}b"}),
            &w.claims(),
        )),
        rejected(NO_KEYS),
    );
    add(
        "kid of 10 KB",
        review(forge(
            &json!({"alg": "ES256", "kid": "k".repeat(10_000)}),
            &w.claims(),
        )),
        rejected(NO_KEYS),
    );
    for (name, value) in [("kid a number", json!(7)), ("kid an array", json!([kid]))] {
        add(
            name,
            review(unsigned(
                json!({"alg": "ES256", "kid": value}).to_string(),
                &claims,
            )),
            rejected(UNREADABLE),
        );
    }

    // Key-injection headers: never fetched nor trusted; the signature decides.
    for (name, extra) in [
        ("jku", json!({"jku": "https://attacker.example/jwks.json"})),
        ("x5u", json!({"x5u": "https://attacker.example/cert.pem"})),
        ("jwk", json!({"jwk": attacker_jwk()})),
        ("x5c", json!({"x5c": ["MIIBszCCAVmgAwIBAgIUAttacker"]})),
        ("x5t", json!({"x5t": "AAAA"})),
        ("b64 false", json!({"b64": false})),
        ("zip DEF", json!({"zip": "DEF"})),
        ("typ JWE", json!({"typ": "JWE", "enc": "A256GCM"})),
    ] {
        let mut header = json!({"alg": "ES256", "kid": kid});
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        add(
            &format!("{name} header, forged, the sim's kid"),
            review(forge(&header, &w.claims())),
            rejected(BAD_SIGNATURE),
        );
    }
    add(
        "jwk header, forged, the attacker's kid",
        review(forge(
            &json!({"alg": "ES256", "kid": "attacker", "jwk": attacker_jwk()}),
            &w.claims(),
        )),
        rejected(NO_KEYS),
    );
    add(
        "jku header, forged, no kid",
        review(forge(
            &json!({"alg": "ES256", "jku": "https://attacker.example/jwks.json"}),
            &w.claims(),
        )),
        rejected(BAD_SIGNATURE),
    );
    // go-jose reads `crit` as a list of names before it verifies.
    for (crit, expect) in [
        (json!(["exp"]), rejected(BAD_SIGNATURE)),
        (json!([]), rejected(BAD_SIGNATURE)),
        (
            json!("b64"),
            refused("json: cannot unmarshal string into Go value of type []string"),
        ),
        (json!(null), rejected(BAD_SIGNATURE)),
    ] {
        add(
            &format!("crit {crit}"),
            review(unsigned(
                json!({"alg": "ES256", "kid": kid, "crit": crit}).to_string(),
                &claims,
            )),
            expect,
        );
    }

    // Duplicate keys: invalid, as go-jose reads them, never "last one wins".
    let dup = |key: &str| format!("json: duplicate key '{key}' in object");
    add(
        "duplicate exp",
        review(w.text(&w.edited("\"exp\":", &format!("\"exp\":{},\"exp\":", t - 7200)))),
        refused(&dup("exp")),
    );
    add(
        "duplicate aud",
        review(w.text(&w.edited("\"aud\":", "\"aud\":[\"api\"],\"aud\":"))),
        refused(&dup("aud")),
    );
    add(
        "duplicate sub",
        review(w.text(&w.edited(
            "\"sub\":",
            "\"sub\":\"system:serviceaccount:kube-system:admin\",\"sub\":",
        ))),
        refused(&dup("sub")),
    );
    add(
        "duplicate kubernetes.io",
        review(w.text(&w.edited(
            "\"kubernetes.io\":",
            "\"kubernetes.io\":{},\"kubernetes.io\":",
        ))),
        refused(&dup("kubernetes.io")),
    );
    add(
        "duplicate kubernetes.io.namespace",
        review(w.text(&w.edited(
            "\"namespace\":\"apps\"",
            "\"namespace\":\"apps\",\"namespace\":\"kube-system\"",
        ))),
        refused(&dup("namespace")),
    );
    add(
        "duplicate kubernetes.io.serviceaccount.uid",
        review(w.text(&w.edited("\"uid\":", "\"uid\":\"x\",\"uid\":"))),
        refused(&dup("uid")),
    );
    add(
        "duplicate key spelled with an escape",
        review(w.text(&w.edited("\"jti\":", "\"jti\":\"a\",\"\\u006ati\":"))),
        refused(&dup("jti")),
    );
    add(
        "duplicate iss, ours last",
        review(w.text(&w.edited("\"iss\":", "\"iss\":\"https://evil.example\",\"iss\":"))),
        refused(&dup("iss")),
    );
    // serde_json's lenient sniff keeps the last `iss`: another issuer, so foreign.
    add(
        "duplicate iss, ours first",
        review(w.text(&w.edited(
            &format!("\"iss\":{iss:?}"),
            &format!("\"iss\":{iss:?},\"iss\":\"https://evil.example\""),
        ))),
        foreign(
            "token issuer \"https://evil.example\" is not a service-account issuer of this cluster",
        ),
    );
    add(
        "duplicate alg in the header",
        review(unsigned(
            format!(r#"{{"alg":"ES256","kid":"{kid}","alg":"none"}}"#),
            &claims,
        )),
        rejected(UNREADABLE),
    );
    add(
        "duplicate kid in the header",
        review(unsigned(
            format!(r#"{{"alg":"ES256","kid":"other","kid":"{kid}"}}"#),
            &claims,
        )),
        rejected(UNREADABLE),
    );
    // go-jose matches claim names case-sensitively: "EXP" is another claim, ignored.
    add(
        "EXP beside exp",
        review(w.text(&w.edited("\"exp\":", &format!("\"EXP\":{},\"exp\":", t - 7200)))),
        rejected(BAD_SIGNATURE),
    );

    // aud: a string or an array of strings; intersected with the requested audiences.
    let audience = |token: &str| {
        refused(&format!(
            "token audiences {token} is invalid for the target audiences [\"vault\"]"
        ))
    };
    for (name, aud, expect) in [
        (
            "aud a string of another audience",
            json!("api"),
            audience("[\"api\"]"),
        ),
        (
            "aud an array of others",
            json!(["api", "vault2"]),
            audience("[\"api\" \"vault2\"]"),
        ),
        ("aud in other case", json!("VAULT"), audience("[\"VAULT\"]")),
        (
            "aud with a NUL",
            json!("vault\u{0}"),
            audience("[\"vault\\0\"]"),
        ),
        ("aud empty string", json!(""), audience("[\"\"]")),
        (
            "aud empty array",
            json!([]),
            audience(&format!("[{iss:?}]")),
        ),
        ("aud null", Value::Null, refused(NOT_AN_AUDIENCE)),
        ("aud a number", json!(7), refused(NOT_AN_AUDIENCE)),
        ("aud true", json!(true), refused(NOT_AN_AUDIENCE)),
        (
            "aud an object",
            json!({"vault": true}),
            refused(NOT_AN_AUDIENCE),
        ),
        (
            "aud an array of numbers",
            json!([7]),
            refused(NOT_AN_AUDIENCE),
        ),
        ("aud nested", json!([["vault"]]), refused(NOT_AN_AUDIENCE)),
        (
            "aud with a null member",
            json!(["vault", null]),
            refused(NOT_AN_AUDIENCE),
        ),
        (
            "aud a string of ours",
            json!("vault"),
            rejected(BAD_SIGNATURE),
        ),
    ] {
        add(name, review(w.unsigned(&w.with("aud", aud))), expect);
    }
    add(
        "aud missing",
        review(w.unsigned(&w.without("aud"))),
        audience(&format!("[{iss:?}]")),
    );

    // Times: any JSON number, truncated; no strings, no overflow, no garbage.
    let not_number = |_k: &str| refused(NOT_A_DATE);
    // Go converts a float beyond int64 to int64's minimum, the distant past; 2^53 is a
    // time like any other, in the distant future.
    let far = |k: &str, n: &str| match (k, n == "9007199254740992") {
        ("exp", false) => refused("service account token has expired"),
        ("nbf", true) => refused("service account token is not valid yet"),
        ("iat", true) => refused("service account token is issued in the future"),
        _ => rejected(BAD_SIGNATURE),
    };
    for key in ["exp", "nbf", "iat"] {
        add(
            &format!("{key} a string"),
            review(w.unsigned(&w.with(key, json!((t + 100).to_string())))),
            not_number(key),
        );
        add(
            &format!("{key} true"),
            review(w.unsigned(&w.with(key, json!(true)))),
            not_number(key),
        );
        add(
            &format!("{key} an array"),
            review(w.unsigned(&w.with(key, json!([t])))),
            not_number(key),
        );
        for n in [
            "9223372036854775807",
            "18446744073709551616",
            "1e308",
            "-1e308",
            "9007199254740992",
        ] {
            add(
                &format!("{key} {n}"),
                review(w.text(&w.edited(
                    &format!("\"{key}\":"),
                    &format!("\"{key}\":{n},\"x{key}\":"),
                ))),
                far(key, n),
            );
        }
    }
    add(
        "exp a float in the past",
        review(w.unsigned(&w.with("exp", json!(t as f64 - 3600.5)))),
        refused("service account token has expired"),
    );
    add(
        "exp a float in the future",
        review(w.unsigned(&w.with("exp", json!(t as f64 + 3600.5)))),
        rejected(BAD_SIGNATURE),
    );
    add(
        "exp in exponent notation, in the past",
        review(w.text(&w.edited("\"exp\":", &format!("\"exp\":{}e0,\"xexp\":", t - 3600)))),
        refused("service account token has expired"),
    );
    add(
        "exp -1",
        review(w.unsigned(&w.with("exp", json!(-1)))),
        refused("service account token has expired"),
    );
    add(
        "exp -0",
        review(w.text(&w.edited("\"exp\":", "\"exp\":-0,\"xexp\":"))),
        refused("service account token has expired"),
    );
    add(
        "exp 1e309 (not a JSON number serde reads)",
        review(w.text(&w.edited("\"exp\":", "\"exp\":1e309,\"xexp\":"))),
        foreign("token payload has no string \"iss\" claim"),
    );
    add(
        "exp NaN",
        review(w.text(&w.edited("\"exp\":", "\"exp\":NaN,\"xexp\":"))),
        foreign("token payload has no string \"iss\" claim"),
    );
    add(
        "exp null: no expiry, as go-jose reads it",
        review(w.unsigned(&w.with("exp", Value::Null))),
        rejected(BAD_SIGNATURE),
    );
    add(
        "nbf a day ahead",
        review(w.unsigned(&w.with("nbf", json!(t + 86_400)))),
        refused("service account token is not valid yet"),
    );
    // In range for the parser (under 2^53 s) but past year 9999, where RFC 3339 ends:
    // the reason must still be written (a fuzzing finding: formatting it panicked).
    add(
        "nbf in the year 65,000",
        review(w.unsigned(&w.with("nbf", json!(1_995_859_859_990i64)))),
        refused("service account token is not valid yet"),
    );
    add(
        "iat in the year 65,000",
        review(w.unsigned(&w.with("iat", json!(1_995_859_859_990i64)))),
        refused("service account token is issued in the future"),
    );
    add(
        "iat just past 9999-12-31T23:59:59Z",
        review(w.unsigned(&w.with("iat", json!(253_402_300_800i64)))),
        refused("service account token is issued in the future"),
    );
    add(
        "iat at 9999-12-31T23:59:59Z",
        review(w.unsigned(&w.with("iat", json!(253_402_300_799i64)))),
        refused("service account token is issued in the future"),
    );
    add(
        "iat an hour ahead",
        review(w.unsigned(&w.with("iat", json!(t + 3600)))),
        refused("service account token is issued in the future"),
    );

    // Missing or misshapen claims: go-jose's decoding errors; the names the validator
    // looks up (claims.go); a missing UID is the API server's to compare.
    let k8s = |v: Value| w.with("kubernetes.io", v);
    let not_a_string = refused("json: cannot unmarshal number into Go value of type string");
    for (name, claims, expect) in [
        (
            "no kubernetes.io",
            w.without("kubernetes.io"),
            refused("resource name may not be empty"),
        ),
        (
            "kubernetes.io a string",
            k8s(json!("apps")),
            refused(
                "json: cannot unmarshal string into Go value of type serviceaccount.kubernetes",
            ),
        ),
        (
            "no serviceaccount",
            k8s(json!({"namespace": "apps"})),
            refused("resource name may not be empty"),
        ),
        (
            "no serviceaccount uid: the signature decides",
            k8s(json!({"namespace": "apps", "serviceaccount": {"name": "web"}})),
            rejected(BAD_SIGNATURE),
        ),
        (
            "empty namespace",
            k8s(json!({"namespace": "", "serviceaccount": {"name": "web", "uid": w.uid}})),
            refused("the server could not find the requested resource"),
        ),
        (
            "namespace a number",
            k8s(json!({"namespace": 7, "serviceaccount": {"name": "web", "uid": w.uid}})),
            not_a_string.clone(),
        ),
        (
            "pod a string",
            k8s(
                json!({"namespace": "apps", "serviceaccount": {"name": "web", "uid": w.uid}, "pod": "web-0"}),
            ),
            refused("json: cannot unmarshal string into Go value of type serviceaccount.ref"),
        ),
        (
            "sub a number",
            w.with("sub", json!(7)),
            not_a_string.clone(),
        ),
        ("jti a number", w.with("jti", json!(7)), not_a_string),
    ] {
        add(name, review(w.unsigned(&claims)), expect);
    }
    add(
        "sub of another account",
        review(w.unsigned(&w.with("sub", json!("system:serviceaccount:kube-system:admin")))),
        // The projected validator ignores `sub`: the signature decides.
        rejected(BAD_SIGNATURE),
    );
    add(
        "namespace with a NUL",
        review(w.unsigned(&k8s(
            json!({"namespace": "apps\u{0}", "serviceaccount": {"name": "web", "uid": w.uid}}),
        ))),
        rejected(BAD_SIGNATURE),
    );
    add(
        "legacy token",
        review(gate.sim.legacy_token("apps", "web")),
        rejected(
            tokengate::token::Rejection::LegacyNotAllowed {
                username: "system:serviceaccount:apps:web".into(),
            }
            .to_string(),
        ),
    );
    add(
        "legacy issuer, fields missing",
        review(w.unsigned(
            &json!({"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:apps:web"}),
        )),
        refused("namespace claim is missing"),
    );
    for (name, claims, why) in [
        (
            "no iss",
            w.without("iss"),
            "token payload has no string \"iss\" claim".to_string(),
        ),
        (
            "iss a number",
            w.with("iss", json!(7)),
            "token payload has no string \"iss\" claim".into(),
        ),
        (
            "iss an array",
            w.with("iss", json!([iss])),
            "token payload has no string \"iss\" claim".into(),
        ),
        (
            "iss of another cluster",
            w.with("iss", json!("https://evil.example")),
            "token issuer \"https://evil.example\" is not a service-account issuer of this cluster"
                .into(),
        ),
        (
            "iss with a trailing slash",
            w.with("iss", json!(format!("{iss}/"))),
            format!("token issuer \"{iss}/\" is not a service-account issuer of this cluster"),
        ),
        (
            "iss with a Cyrillic lookalike",
            w.with("iss", json!(iss.replace('e', "\u{0435}"))),
            format!(
                "token issuer {:?} is not a service-account issuer of this cluster",
                iss.replace('e', "\u{0435}")
            ),
        ),
    ] {
        add(name, review(w.unsigned(&claims)), foreign(&why));
    }
    for (name, payload) in [
        ("claims an array", "[]".to_string()),
        ("claims null", "null".into()),
        ("claims a string", format!("{iss:?}")),
        ("claims with trailing garbage", format!("{claims}x")),
        ("claims with a byte-order mark", format!("\u{feff}{claims}")),
        (
            "claims with a lone surrogate",
            w.edited("\"jti\":\"", "\"jti\":\"\\ud800"),
        ),
        (
            "claims nested 5,000 levels",
            w.edited(
                "\"jti\":",
                &format!("\"deep\":{},\"jti\":", nested(5000, true)),
            ),
        ),
        ("claims nested 5,000 levels, unclosed", nested(5000, false)),
    ] {
        add(
            name,
            review(w.text(&payload)),
            foreign("token payload has no string \"iss\" claim"),
        );
    }
    add(
        "claims with invalid UTF-8",
        review(unsigned(
            w.header().as_bytes(),
            [claims.as_bytes(), b"\xff\xfe"].concat(),
        )),
        foreign("token payload has no string \"iss\" claim"),
    );
    add(
        "claims with invalid UTF-8 in a string",
        review(unsigned(
            w.header().as_bytes(),
            with_byte_after(&claims, "\"jti\":\"", 0xff),
        )),
        foreign("token payload has no string \"iss\" claim"),
    );
    add(
        "header with invalid UTF-8",
        review(unsigned(b"{\"alg\":\"ES256\xff\"}", claims.as_bytes())),
        rejected(UNREADABLE),
    );
    add(
        "header an array",
        review(unsigned("[]", &claims)),
        rejected(UNREADABLE),
    );
    add(
        "header not JSON",
        review(unsigned("alg=ES256", &claims)),
        rejected(UNREADABLE),
    );
    add(
        "header nested 5,000 levels",
        review(unsigned(
            format!(r#"{{"alg":"ES256","x":{}}}"#, nested(5000, true)),
            &claims,
        )),
        rejected(UNREADABLE),
    );

    // Encoding: Go's RawURLEncoding, exactly.
    let good = w.unsigned(&w.claims());
    let [h, p, _s]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let payload_not_b64 = foreign("token payload is not base64url");
    add(
        "payload padded",
        review(format!("{h}.{p}=.{DUMMY_SIGNATURE}")),
        payload_not_b64.clone(),
    );
    add(
        "payload with a space",
        review(format!("{h}.{} {}.{DUMMY_SIGNATURE}", &p[..10], &p[10..])),
        payload_not_b64.clone(),
    );
    add(
        "payload with a newline",
        review(format!("{h}.{}\n{}.{DUMMY_SIGNATURE}", &p[..10], &p[10..])),
        payload_not_b64.clone(),
    );
    add(
        "payload with a NUL",
        review(format!(
            "{h}.{}\u{0}{}.{DUMMY_SIGNATURE}",
            &p[..10],
            &p[10..]
        )),
        payload_not_b64.clone(),
    );
    add(
        "payload in standard base64",
        review(format!("{h}.{}.{DUMMY_SIGNATURE}", std_alphabet_payload(w))),
        payload_not_b64.clone(),
    );
    add(
        "payload with a dot inside",
        review(format!("{h}.{}.{}.{DUMMY_SIGNATURE}", &p[..10], &p[10..])),
        foreign("token is not a JWT (it has 4 dot-separated segments, a JWT has 3)"),
    );
    add(
        "header padded",
        review(format!("{h}=.{p}.{DUMMY_SIGNATURE}")),
        rejected(UNREADABLE),
    );
    add(
        "leading space",
        review(format!(" {good}")),
        rejected(UNREADABLE),
    );
    add(
        "tab in the header",
        review(format!("{}\t{}.{p}.{DUMMY_SIGNATURE}", &h[..5], &h[5..])),
        rejected(UNREADABLE),
    );
    // An empty signature is read, and fails verification, as go-jose does.
    add(
        "signature empty",
        review(format!("{h}.{p}.")),
        rejected(BAD_SIGNATURE),
    );
    for (name, sig) in [
        ("signature padded", format!("{DUMMY_SIGNATURE}==")),
        ("signature in standard base64", "c2ln+/+/".into()),
        ("signature with a space", "c2ln bmF0".into()),
        ("trailing newline", format!("{DUMMY_SIGNATURE}\n")),
    ] {
        add(name, review(format!("{h}.{p}.{sig}")), rejected(UNREADABLE));
    }
    // A real token made non-canonical: the same bytes decoded, but the signature covers
    // the text, so it no longer verifies.
    let real = gate.workload_token("apps", "malleable", &["vault"]);
    // The header or the claims, whichever has unused bits to set.
    let segment = if !real.split('.').nth(1).unwrap().len().is_multiple_of(4) {
        1
    } else {
        0
    };
    add(
        "real token with non-canonical trailing bits in a signed segment",
        review(non_canonical(&real, segment)),
        rejected(BAD_SIGNATURE),
    );
    // Stricter than the API server, which decodes with Go's non-strict RawURLEncoding and
    // would read the same signature bytes: a safe-side difference (a local "no" for a
    // token nobody mints), kept visible here.
    add(
        "real token with non-canonical trailing bits in the signature",
        review(non_canonical(&real, 2)),
        rejected(BAD_SIGNATURE),
    );
    let real_sig = real.rsplit('.').next().unwrap().to_string();
    add(
        "real signature on edited claims",
        review(format!("{h}.{p}.{real_sig}")),
        rejected(BAD_SIGNATURE),
    );
    for (name, token) in [
        ("empty segments", ".."),
        ("two segments", "a.b"),
        ("one dot", "."),
        ("a NUL", "\u{0}"),
        ("a JWE (five segments)", "a.b.c.d.e"),
        ("a bootstrap token", "abcdef.0123456789abcdef"),
    ] {
        let segments = token.split('.').count();
        let expect = if token == ".." {
            foreign("token payload has no string \"iss\" claim")
        } else {
            foreign(&format!(
                "token is not a JWT (it has {segments} dot-separated segment{}, a JWT has 3)",
                if segments == 1 { "" } else { "s" }
            ))
        };
        add(name, review(token), expect);
    }

    // Sizes: the token limit (16 KiB) is checked before anything is decoded.
    for len in [16 * 1024 + 1, 60_000] {
        add(
            &format!("{len}-byte token"),
            review(format!(
                "{h}.{}.{DUMMY_SIGNATURE}",
                "A".repeat(len - h.len() - DUMMY_SIGNATURE.len() - 2)
            )),
            rejected(UNREADABLE),
        );
    }
    let deep = w.edited(
        "\"jti\":",
        &format!("\"deep\":{},\"jti\":", nested(10_000, true)),
    );
    add(
        "claims nested 10,000 levels",
        review(w.text(&deep)),
        rejected(UNREADABLE),
    );
    add(
        "a 15 KB claims segment, under the limit",
        review(w.unsigned(&w.with("pad", json!("p".repeat(11_000))))),
        rejected(BAD_SIGNATURE),
    );

    // Forwarded: what the gate cannot know, only the API server can.
    let api = [iss.as_str()];
    let other_issuer = gate
        .sim
        .sign_claims(&w.with("iss", json!("https://evil.example")));
    add(
        "not a JWT, for the API server's audience",
        review_for("not-a-jwt", &api),
        Expect::Forwarded(
            "a static or webhook token may be valid for the API server's own audience",
        ),
    );
    add(
        "a bootstrap token, for the API server's audience",
        review_for("abcdef.0123456789abcdef", &api),
        Expect::Forwarded(
            "the API server's bootstrap-token authenticator may know it, for its own audience",
        ),
    );
    add(
        "another issuer's JWT, for the API server's audience",
        review_for(other_issuer, &api),
        Expect::Forwarded(
            "another issuer's JWT may be valid at the API server's OIDC authenticator for its own audience",
        ),
    );
    add(
        "garbage, for vault and the API server's audience",
        review_for("garbage", &["vault", iss]),
        Expect::Forwarded("one requested audience is the API server's own"),
    );
    let ghost = gate.sim.sign_claims(&json!({
        "aud": ["vault"], "iat": t - 10, "nbf": t - 10, "exp": t + 3600, "iss": iss,
        "sub": "system:serviceaccount:apps:ghost",
        "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}}
    }));
    add(
        "real signature, service account that does not exist",
        review(ghost),
        Expect::Forwarded(
            "the signature and claims verify; only the API server knows which service accounts exist",
        ),
    );
    let mut stale = w.claims();
    stale["kubernetes.io"]["serviceaccount"]["uid"] = json!("11111111-1111-1111-1111-111111111111");
    add(
        "real signature, service account UID of a deleted incarnation",
        review(gate.sim.sign_claims(&stale)),
        Expect::Forwarded("only the API server knows the service account's current UID"),
    );
    let orphan = gate.workload_token("apps", "orphan", &["vault"]);
    assert!(gate.sim.delete_pod("apps", "orphan-0"));
    add(
        "real token bound to a deleted pod",
        review(orphan),
        Expect::Forwarded("only the API server knows that the bound pod is gone"),
    );
    cases
}

/// `text`'s bytes with `byte` inserted after the first `marker`.
fn with_byte_after(text: &str, marker: &str, byte: u8) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.insert(text.find(marker).unwrap() + marker.len(), byte);
    bytes
}

/// A payload segment that decodes as standard base64 but not base64url: re-encoded with
/// `+` or `/`, with a filler claim grown until one appears.
fn std_alphabet_payload(w: &World) -> String {
    for n in 0.. {
        let p = b64(w.with("fill", json!("?".repeat(n))).to_string());
        if p.contains(['-', '_']) {
            return p.replace('-', "+").replace('_', "/");
        }
    }
    unreachable!()
}

/// `token` with segment `i`'s last character changed so that its unused low bits are
/// set: Go's decoder (and ours) read the same bytes, but the text differs.
fn non_canonical(token: &str, i: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let segment = &mut parts[i];
    let unused = match segment.len() % 4 {
        2 => 0b1111,
        3 => 0b11,
        _ => panic!("segment {i} has no unused bits: {segment}"),
    };
    let last = segment.pop().unwrap();
    let index = ALPHABET.iter().position(|&c| c == last as u8).unwrap();
    let changed = ALPHABET[index | unused] as char;
    assert_ne!(changed, last);
    segment.push(changed);
    parts.join(".")
}

fn body_cases() -> Vec<Case> {
    let not_a_review = "the request body is not a TokenReview";
    let mut cases: Vec<Case> = [
        ("an array", "[]".to_string(), not_a_review),
        ("a number", "42".into(), not_a_review),
        ("a string", "\"TokenReview\"".into(), not_a_review),
        ("null", "null".into(), not_a_review),
        ("empty", String::new(), not_a_review),
        (
            "form-encoded",
            "token=abc&audience=vault".into(),
            not_a_review,
        ),
        (
            "truncated",
            "{\"spec\":{\"token\":\"abc".into(),
            not_a_review,
        ),
        ("spec null", r#"{"spec":null}"#.into(), not_a_review),
        ("spec an array", r#"{"spec":[]}"#.into(), not_a_review),
        (
            "token a number",
            r#"{"spec":{"token":7}}"#.into(),
            not_a_review,
        ),
        (
            "token an array",
            r#"{"spec":{"token":["a"]}}"#.into(),
            not_a_review,
        ),
        (
            "token an object",
            r#"{"spec":{"token":{"raw":"a"}}}"#.into(),
            not_a_review,
        ),
        (
            "audiences a string",
            r#"{"spec":{"token":"a","audiences":"vault"}}"#.into(),
            not_a_review,
        ),
        (
            "audiences of numbers",
            r#"{"spec":{"token":"a","audiences":[7]}}"#.into(),
            not_a_review,
        ),
        (
            "audiences nested",
            r#"{"spec":{"token":"a","audiences":[["vault"]]}}"#.into(),
            not_a_review,
        ),
        (
            "kind a number",
            r#"{"kind":7,"spec":{"token":"a"}}"#.into(),
            not_a_review,
        ),
        (
            "duplicate kind",
            r#"{"kind":"Pod","kind":"TokenReview","spec":{"token":"a"}}"#.into(),
            "duplicate field `kind`",
        ),
        (
            "token with a lone surrogate",
            r#"{"spec":{"token":"\ud800"}}"#.into(),
            not_a_review,
        ),
        (
            "a byte-order mark",
            format!("\u{feff}{}", json!({"spec": {"token": "a"}})),
            not_a_review,
        ),
        (
            "audiences nested 10,000 levels",
            format!(
                r#"{{"spec":{{"token":"a","audiences":{}}}}}"#,
                nested(10_000, true)
            ),
            not_a_review,
        ),
        (
            "spec nested 10,000 levels",
            format!(r#"{{"spec":{}}}"#, nested(10_000, true)),
            not_a_review,
        ),
        (
            "nested 10,000 levels, unclosed",
            format!(r#"{{"spec":{{"token":"a"}},"x":{}"#, nested(10_000, false)),
            not_a_review,
        ),
        (
            "empty token",
            r#"{"spec":{"token":""}}"#.into(),
            "token is required for TokenReview in authentication",
        ),
        (
            "no token",
            r#"{"spec":{"audiences":["vault"]}}"#.into(),
            "token is required for TokenReview in authentication",
        ),
        (
            "an empty object",
            "{}".into(),
            "token is required for TokenReview in authentication",
        ),
        (
            "kind Pod",
            r#"{"kind":"Pod","spec":{"token":"a"}}"#.into(),
            "kind \"Pod\" is not a TokenReview",
        ),
        (
            "kind SubjectAccessReview",
            r#"{"kind":"SubjectAccessReview","spec":{"token":"a"}}"#.into(),
            "kind \"SubjectAccessReview\" is not a TokenReview",
        ),
        (
            "kind in lower case",
            r#"{"kind":"tokenreview","spec":{"token":"a"}}"#.into(),
            "kind \"tokenreview\" is not a TokenReview",
        ),
        (
            "apiVersion v2",
            r#"{"apiVersion":"authentication.k8s.io/v2","spec":{"token":"a"}}"#.into(),
            "apiVersion \"authentication.k8s.io/v2\" is not served here",
        ),
        (
            "apiVersion v1 (core)",
            r#"{"apiVersion":"v1","spec":{"token":"a"}}"#.into(),
            "apiVersion \"v1\" is not served here",
        ),
    ]
    .into_iter()
    .map(|(name, body, msg)| {
        case(
            format!("body: {name}"),
            Input::Body(body.into_bytes()),
            Expect::Status(400, msg),
        )
    })
    .collect();
    for (name, body) in [
        (
            "invalid UTF-8",
            b"{\"spec\":{\"token\":\"a\xff\"}}".to_vec(),
        ),
        ("a raw NUL", b"{\"spec\":{\"token\":\"a\x00\"}}".to_vec()),
        (
            "a raw newline in the token",
            b"{\"spec\":{\"token\":\"a\nb\"}}".to_vec(),
        ),
    ] {
        cases.push(case(
            format!("body: {name}"),
            Input::Body(body),
            Expect::Status(400, not_a_review),
        ));
    }
    let foreign_for = |_why: &str, _requested: &str| rejected(UNREADABLE);
    let not_jwt = "token is not a JWT (it has 1 dot-separated segment, a JWT has 3)";
    for (name, body, expect) in [
        (
            "a status claiming authenticated",
            json!({"spec": {"token": "garbage"}, "status": {"authenticated": true, "user": {"username": "system:admin"}}}),
            foreign_for(not_jwt, "[\"vault\"]"),
        ),
        (
            "audiences null",
            json!({"spec": {"token": "garbage", "audiences": null}}),
            foreign_for(not_jwt, "[\"vault\"]"),
        ),
        (
            "audiences empty",
            json!({"spec": {"token": "garbage", "audiences": []}}),
            foreign_for(not_jwt, "[\"vault\"]"),
        ),
        (
            "token a NUL",
            json!({"spec": {"token": "\u{0}"}}),
            foreign_for(not_jwt, "[\"vault\"]"),
        ),
        (
            "metadata with path characters",
            json!({"metadata": {"name": "../../etc", "namespace": "kube-system"}, "spec": {"token": "garbage"}}),
            foreign_for(not_jwt, "[\"vault\"]"),
        ),
        (
            "3,000 audiences",
            json!({"spec": {"token": "garbage", "audiences": (0..3000).map(|i| format!("a{i}")).collect::<Vec<_>>()}}),
            rejected(UNREADABLE),
        ),
        (
            "an audience of 50 KB",
            json!({"spec": {"token": "garbage", "audiences": ["v".repeat(50_000)]}}),
            rejected(UNREADABLE),
        ),
    ] {
        cases.push(case(
            format!("body: {name}"),
            Input::Body(body.to_string().into_bytes()),
            expect,
        ));
    }
    // Unknown fields are skipped without recursion (serde_json's `ignore_value` is a
    // loop), so deep nesting there costs one pass and changes nothing.
    for (name, body) in [
        (
            "nested 10,000 levels",
            format!(r#"{{"spec":{{"token":"a"}},"x":{}}}"#, nested(10_000, true)),
        ),
        (
            "nested 10,000 levels in spec",
            format!(r#"{{"spec":{{"token":"a","x":{}}}}}"#, nested(10_000, true)),
        ),
    ] {
        cases.push(case(
            format!("body: {name}"),
            Input::Body(body.into_bytes()),
            foreign_for(not_jwt, "[\"vault\"]"),
        ));
    }
    // Duplicate fields inside `spec`: k8s-openapi keeps the last, as the API server's
    // decoder does (a warning there, no error); the echoed spec is the reviewed one.
    cases.push(case(
        "body: duplicate spec.token",
        Input::Body(br#"{"spec":{"token":"first.a.b","token":"second"}}"#.to_vec()),
        foreign_for(not_jwt, "[\"vault\"]"),
    ));
    for (name, body) in [
        ("a 1 MB token", json!({"spec": {"token": "a".repeat(1 << 20)}}).to_string()),
        ("100,000 audiences", json!({"spec": {"token": "a", "audiences": (0..100_000).map(|i| format!("a{i}")).collect::<Vec<_>>()}}).to_string()),
        ("nested 100,000 levels", format!(r#"{{"spec":{{"token":"a"}},"x":{}}}"#, nested(100_000, true))),
    ] {
        cases.push(case(
            format!("body: {name}"),
            Input::Body(body.into_bytes()),
            Expect::Status(413, "the request body is larger than 65536 bytes"),
        ));
    }
    cases.push(case(
        "body: 1 MB chunked, no Content-Length",
        Input::Raw(chunked_review(
            &json!({"spec": {"token": "a".repeat(1 << 20)}}).to_string(),
        )),
        Expect::Status(413, "the request body is larger than 65536 bytes"),
    ));
    cases
}

fn auth_cases(w: &World) -> Vec<Case> {
    let invalid = |error: &str| Expect::Http(401, format!("invalid token: {error}\n"));
    let no_token = Expect::Http(401, "no bearer token".into());
    let header = |s: &str| s.as_bytes().to_vec();
    let big = |n: usize| format!("Bearer {}", "a".repeat(n)).into_bytes();
    let foreign = UNREADABLE;
    let forged = forge(
        &json!({"alg": "ES256", "kid": "\"\r\n<evil>\\"}),
        &w.claims(),
    );
    let cases = vec![
        (
            "Basic credentials",
            "/auth".to_string(),
            header("Basic dXNlcjpwYXNz"),
            no_token.clone(),
        ),
        (
            "Bearer with no token",
            "/auth".into(),
            header("Bearer"),
            no_token.clone(),
        ),
        (
            "Bearer and spaces",
            "/auth".into(),
            header("Bearer    "),
            no_token.clone(),
        ),
        (
            "an empty header",
            "/auth".into(),
            Vec::new(),
            no_token.clone(),
        ),
        (
            "invalid UTF-8 (obs-text) in the token",
            "/auth".into(),
            b"Bearer a\xffb".to_vec(),
            no_token.clone(),
        ),
        (
            "lower-case scheme, padded",
            "/auth".into(),
            header("bearer   garbage  "),
            invalid(foreign),
        ),
        (
            "alg none",
            "/auth/orders/42".into(),
            format!(
                "Bearer {}.{}.",
                b64(r#"{"alg":"none"}"#),
                b64(w.claims().to_string())
            )
            .into_bytes(),
            invalid(BAD_SIGNATURE),
        ),
        (
            "a quote, CR and LF in the kid",
            "/auth".into(),
            format!("Bearer {forged}").into_bytes(),
            invalid(NO_KEYS),
        ),
        (
            "a 20 KB token",
            "/auth".into(),
            big(20_000),
            invalid(UNREADABLE),
        ),
        (
            "a wrong audience asked 500 times",
            format!("/auth?{}", "audience=x&".repeat(500)),
            header("Bearer garbage"),
            invalid(UNREADABLE),
        ),
        (
            "a 1 MB token",
            "/auth".into(),
            big(1 << 20),
            Expect::Http(431, String::new()),
        ),
        (
            "a NUL in the header",
            "/auth".into(),
            b"Bearer a\x00b".to_vec(),
            Expect::Http(400, String::new()),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, path, value, expect)| {
            case(format!("/auth: {name}"), Input::Auth(path, value), expect)
        })
        .collect()
}

/// A chunked `POST /review` (no `Content-Length`), in 8 KiB chunks.
fn chunked_review(body: &str) -> Vec<u8> {
    let mut out = b"POST /review HTTP/1.1\r\nhost: gate\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\nauthorization: Bearer REVIEWER\r\n\r\n".to_vec();
    for chunk in body.as_bytes().chunks(8192) {
        out.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend(chunk);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n\r\n");
    out
}

/// An answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Writes `request` on a fresh connection and reads the answer until the gate closes it.
/// Writing and reading run together: the gate may answer (413, 431) before it has read
/// everything, and then the rest of the write fails, which is fine.
async fn exchange(gate: &TestGate, request: &[u8]) -> Answer {
    let addr = gate.url.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = async {
        let _ = write.write_all(request).await;
        let _ = write.flush().await;
    };
    let reader = async {
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
            if complete(&bytes) {
                break;
            }
        }
        bytes
    };
    let ((), bytes) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the gate answers within 20s");
    parse(&bytes)
}

fn split_head(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Whether a whole response with a `Content-Length` has arrived.
fn complete(bytes: &[u8]) -> bool {
    let Some(end) = split_head(bytes) else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| bytes.len() >= end + 4 + n)
}

fn parse(bytes: &[u8]) -> Answer {
    let end = split_head(bytes)
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec()))
        .collect();
    Answer {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    }
}

fn request(method: &str, path: &str, authorization: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nhost: gate\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    )
    .into_bytes();
    if let Some(value) = authorization {
        out.extend(b"authorization: ");
        out.extend(value);
        out.extend(b"\r\n");
    }
    out.extend(b"\r\n");
    out.extend(body);
    out
}

/// Runs every case against `gate`, checking each outcome and the sim's review counter.
/// Returns the number of cases run.
async fn run(gate: &TestGate, cases: Vec<Case>) -> usize {
    let reviewer = gate.sim.reviewer_token();
    let bearer = format!("Bearer {reviewer}");
    let mut failures = Vec::new();
    let count = cases.len();
    for Case {
        name,
        input,
        expect,
    } in cases
    {
        let bytes = match input {
            Input::Review(token, audiences) => {
                let mut spec = json!({ "token": token });
                if let Some(a) = audiences {
                    spec["audiences"] = json!(a);
                }
                let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec});
                request(
                    "POST",
                    "/review",
                    Some(bearer.as_bytes()),
                    body.to_string().as_bytes(),
                )
            }
            Input::Body(body) => request("POST", "/review", Some(bearer.as_bytes()), &body),
            Input::Raw(raw) => {
                let text = b"Bearer REVIEWER";
                let at = raw.windows(text.len()).position(|w| w == text).unwrap();
                [&raw[..at], bearer.as_bytes(), &raw[at + text.len()..]].concat()
            }
            Input::Auth(path, value) => request("GET", &path, Some(&value), b""),
        };
        let before = gate.upstream_calls();
        let answer = exchange(gate, &bytes).await;
        let calls = gate.upstream_calls() - before;
        let json: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        let problem = check(&expect, &answer, &json, &text, calls);
        if let Some(problem) = problem {
            failures.push(format!("{name}: {problem}"));
        }
    }
    println!("{count} cases run");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    count
}

/// What is wrong with `answer` for `expect`, if anything.
fn check(expect: &Expect, answer: &Answer, json: &Value, text: &str, calls: u64) -> Option<String> {
    let short = |s: &str| s.chars().take(400).collect::<String>();
    if answer.status >= 500 {
        return Some(format!("a {} ({})", answer.status, short(text)));
    }
    if json["status"]["authenticated"] == Value::Bool(true)
        || answer.header("x-remote-user").is_some()
    {
        return Some(format!("AUTHENTICATED: {}", short(text)));
    }
    let asked = |n: u64| {
        (calls != n).then(|| format!("the API server was asked {calls} times, expected {n}"))
    };
    match expect {
        Expect::Rejected(reason) => {
            if answer.status != 201 || json["kind"] != "TokenReview" {
                return Some(format!(
                    "expected a 201 TokenReview, got {} {}",
                    answer.status,
                    short(text)
                ));
            }
            let error = json["status"]["error"].as_str().unwrap_or_default();
            if error != reason.as_str() {
                return Some(format!("status.error {:?} is not {reason:?}", short(error)));
            }
            asked(0)
        }
        Expect::Forwarded(_why) => {
            if answer.status != 201 || !json["status"].is_object() {
                return Some(format!(
                    "expected a 201 TokenReview refused upstream, got {} {}",
                    answer.status,
                    short(text)
                ));
            }
            asked(1)
        }
        Expect::Status(code, message) => {
            if answer.status != *code || json["kind"] != "Status" || json["code"] != json!(code) {
                return Some(format!(
                    "expected a {code} Status, got {} {}",
                    answer.status,
                    short(text)
                ));
            }
            let got = json["message"].as_str().unwrap_or_default();
            if !got.contains(message) {
                return Some(format!(
                    "message {:?} does not contain {message:?}",
                    short(got)
                ));
            }
            asked(0)
        }
        Expect::Http(code, needle) => {
            if answer.status != *code {
                return Some(format!(
                    "expected {code}, got {} {}",
                    answer.status,
                    short(text)
                ));
            }
            let challenge = answer.header("www-authenticate").unwrap_or_default();
            if *code == 401 {
                let attribute = needle != "no bearer token";
                if challenge.contains("error=\"invalid_token\"") != attribute
                    || !challenge.starts_with("Bearer realm=\"tokengate\"")
                {
                    return Some(format!("challenge {challenge:?} does not fit {needle:?}"));
                }
            }
            if !text.contains(needle.as_str()) {
                return Some(format!(
                    "body {:?} does not contain {needle:?}",
                    short(text)
                ));
            }
            asked(0)
        }
    }
}

async fn world(gate: &TestGate) -> World {
    let uid = gate.sim.create_service_account("apps", "web");
    World {
        iss: gate.sim.issuer().to_string(),
        kid: gate.sim.current_kid(),
        uid,
        t: crate::jwt::now(),
    }
}

/// The gate still decides after the catalog: nothing in it broke the process.
async fn still_serving(gate: &TestGate) {
    let token = gate.workload_token("apps", "survivor", &["vault"]);
    let (status, review) = gate.review(&token, None).await;
    assert_eq!(status, http::StatusCode::CREATED);
    assert!(authenticated(&review), "{review}");
}

#[tokio::test]
async fn hostile_tokens_are_rejected_locally_with_a_precise_reason_or_forwarded_for_a_stated_one() {
    let gate = spawn_gate(&[]).await;
    let w = world(&gate).await;
    let cases = token_cases(&gate, &w);
    let n = run(&gate, cases).await;
    assert!(n >= 150, "the token catalog has {n} cases");
    still_serving(&gate).await;
}

#[tokio::test]
async fn hostile_request_bodies_get_a_status_or_a_precise_rejection() {
    let gate = spawn_gate(&[]).await;
    let n = run(&gate, body_cases()).await;
    assert!(n >= 40, "the body catalog has {n} cases");
    still_serving(&gate).await;
}

#[tokio::test]
async fn hostile_authorization_headers_at_auth_get_401_or_a_4xx_never_an_identity() {
    let gate = spawn_gate(&[]).await;
    let w = world(&gate).await;
    let n = run(&gate, auth_cases(&w)).await;
    assert!(n >= 12, "the /auth catalog has {n} cases");
    still_serving(&gate).await;
}
