//! JWTs written by hand, for tokens no TokenRequest would mint: base64url segments,
//! service-account claims in the API server's layout, and tokens signed with a key the
//! test holds (a forger's own, the real API server's test key, public bytes as an HMAC
//! secret) or carrying a dummy signature. A token the sim's own key signs comes from
//! `Sim::sign_claims`; this module knows no key of the sim's.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// A signature segment that decodes (to the bytes `signature`) and that no key verifies.
pub const DUMMY_SIGNATURE: &str = "c2lnbmF0dXJl";

/// `bytes` in base64url without padding, as JWT segments are written.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Now, in the seconds since the epoch that `iat`, `nbf` and `exp` count.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims of a token of service account `ns/name` (UID `uid`, no pod) from issuer
/// `iss`, as the API server lays them out: for `aud`, issued and valid from `iat`,
/// expiring at `exp`.
pub fn claims(
    iss: &str,
    ns: &str,
    name: &str,
    uid: &str,
    aud: &[&str],
    iat: i64,
    exp: i64,
) -> Value {
    json!({
        "aud": aud, "iat": iat, "nbf": iat, "exp": exp, "iss": iss,
        "jti": "6b4f0c1e-0000-4000-8000-000000000000",
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": uid}}
    })
}

/// Exactly these header and claims texts, signed by `key` under `alg`.
pub fn sign(key: &EncodingKey, alg: Algorithm, header: &str, claims: &str) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// `header` and `claims` signed ES256 by a new key of the forger's own: a well-formed
/// token whose signature no published key verifies.
pub fn forge(header: &Value, claims: &Value) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let signer = EncodingKey::from_ec_der(&key.serialize_der());
    sign(
        &signer,
        Algorithm::ES256,
        &header.to_string(),
        &claims.to_string(),
    )
}

/// Exactly these header and claims bytes (invalid UTF-8 included) with
/// [`DUMMY_SIGNATURE`]: whatever passes the parser and the local checks dies at the
/// signature check.
pub fn unsigned(header: impl AsRef<[u8]>, claims: impl AsRef<[u8]>) -> String {
    format!("{}.{}.{DUMMY_SIGNATURE}", b64(header), b64(claims))
}
