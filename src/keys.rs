//! The issuer's public keys and local signature checks.
//!
//! Responsible for: loading the keys the API server signs service-account tokens with
//! (its JWKS through OIDC discovery, a JWKS file, or PEM public-key files like the API
//! server's `--service-account-key-file`), refreshing them (periodically, honouring
//! `Cache-Control: max-age`, and when a token names an unknown `kid`: rate-limited and
//! coalesced, so a flood of random `kid`s costs at most one refresh per interval; the
//! last good set is kept when a refresh fails), and verifying a token's signature with
//! the key its `kid` names and only with the algorithm that key is published for
//! (RSA keys: RS256/384/512; EC keys: the ES algorithm of their curve).
//!
//! Not responsible for: claims (see `token`), what a failed check means (see `review`).
//! A signature that cannot be checked here (an algorithm the crypto library lacks, such
//! as ES512) is not a rejection: the API server decides.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use ring::signature::{self, VerificationAlgorithm};
use tokio::time::Instant;

use crate::config::KeySource;
use crate::token::Header;
use crate::upstream::{self, Upstream, UpstreamError};

/// Refreshes on an unknown `kid` happen at most this often.
pub const UNKNOWN_KID_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// How long a key set is kept when its source names no `max-age`, and the longest any is.
pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Where the API server serves its service-account signing keys.
pub(crate) const API_SERVER_JWKS_PATH: &str = "/openid/v1/jwks";
/// The only media type the API server serves its JWKS as (`Accept: application/json`
/// gets 406 Not Acceptable).
pub(crate) const JWKS_MEDIA_TYPE: &str = "application/jwk-set+json";
/// The shortest periodic refresh interval, whatever `max-age` says.
const MIN_MAX_AGE: Duration = Duration::from_secs(60);

/// What a signature check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The signature is the key's.
    Valid,
    /// The signature is not valid: the reason, for `status.error`.
    Invalid(String),
    /// No key has the token's `kid` (after a refresh, where one was allowed).
    UnknownKey(String),
    /// The signature cannot be checked here (e.g. an algorithm the crypto library lacks).
    Unverifiable(String),
}

/// Why keys could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeysError {
    /// The API server did not serve its discovery document or JWKS.
    #[error("cannot fetch the service-account issuer's keys from the API server: {0}")]
    Upstream(#[from] UpstreamError),
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        message: String,
    },
    /// The document or key is not usable.
    #[error("{0}")]
    Invalid(String),
}

/// The key family a key is published for, and so the algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    P521,
}

impl Family {
    /// ring's algorithm to verify `alg` with, if this key may verify it at all.
    fn algorithm(self, alg: &str) -> Option<Result<&'static dyn VerificationAlgorithm, String>> {
        match (self, alg) {
            (Family::Rsa, "RS256") => Some(Ok(&signature::RSA_PKCS1_2048_8192_SHA256)),
            (Family::Rsa, "RS384") => Some(Ok(&signature::RSA_PKCS1_2048_8192_SHA384)),
            (Family::Rsa, "RS512") => Some(Ok(&signature::RSA_PKCS1_2048_8192_SHA512)),
            // The API server signs RS256 only, but verifies RSA-PSS with the same key.
            (Family::Rsa, "PS256") => Some(Ok(&signature::RSA_PSS_2048_8192_SHA256)),
            (Family::Rsa, "PS384") => Some(Ok(&signature::RSA_PSS_2048_8192_SHA384)),
            (Family::Rsa, "PS512") => Some(Ok(&signature::RSA_PSS_2048_8192_SHA512)),
            // JWS carries ECDSA signatures as fixed-width r || s.
            (Family::P256, "ES256") => Some(Ok(&signature::ECDSA_P256_SHA256_FIXED)),
            (Family::P384, "ES384") => Some(Ok(&signature::ECDSA_P384_SHA384_FIXED)),
            (Family::P521, "ES512") => {
                Some(Err("ES512 (P-521) signatures cannot be checked here".into()))
            }
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Rsa => "RSA",
            Family::P256 => "EC P-256",
            Family::P384 => "EC P-384",
            Family::P521 => "EC P-521",
        }
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    /// The public key as ring takes it: a PKCS#1 RSAPublicKey or an uncompressed EC
    /// point. `None` for a key ring cannot use (P-521).
    public: Option<Vec<u8>>,
}

/// One loaded set of keys.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document; keys of other types (`oct`, `OKP`) are ignored.
    pub fn from_jwks(bytes: &[u8]) -> Result<KeySet, KeysError> {
        let set: JwkSet = serde_json::from_slice(bytes)
            .map_err(|e| KeysError::Invalid(format!("the JWKS is not valid JSON Web Keys: {e}")))?;
        let keys: Vec<Key> = set.keys.iter().filter_map(key_from_jwk).collect();
        if keys.is_empty() {
            return Err(KeysError::Invalid(
                "the JWKS holds no RSA or EC public key".into(),
            ));
        }
        Ok(KeySet { keys })
    }

    /// Reads PEM public keys; each gets the `kid` the API server gives it (base64url of
    /// the SHA-256 of its DER SubjectPublicKeyInfo).
    pub(crate) fn from_pem_files(paths: &[PathBuf]) -> Result<KeySet, KeysError> {
        let mut keys = Vec::new();
        for path in paths {
            let text = std::fs::read(path).map_err(|e| KeysError::Read {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let mut found = false;
            for block in pem_blocks(&text) {
                let (label, der) = block;
                if label != "PUBLIC KEY" {
                    continue;
                }
                let family = spki_family(&der).ok_or_else(|| {
                    KeysError::Invalid(format!(
                        "{}: a public key that is neither RSA nor EC P-256/384/521",
                        path.display()
                    ))
                })?;
                keys.push(Key {
                    kid: Some(kid_of_spki(&der)),
                    family,
                    public: spki_key_bits(&der).map(<[u8]>::to_vec),
                });
                found = true;
            }
            if !found {
                return Err(KeysError::Invalid(format!(
                    "{}: no \"PUBLIC KEY\" PEM block (convert an RSA PUBLIC KEY with `openssl rsa -RSAPublicKey_in -pubout`)",
                    path.display()
                )));
            }
        }
        Ok(KeySet { keys })
    }

    /// The `kid`s in the set.
    pub(crate) fn kids(&self) -> Vec<String> {
        self.keys.iter().filter_map(|k| k.kid.clone()).collect()
    }

    /// Checks `raw`'s signature with the key its header's `kid` names (every key of a
    /// fitting family when the token names none, as the API server tries them all).
    pub fn verify(&self, raw: &str, header: &Header) -> Verification {
        let Some((message, signature)) = raw.rsplit_once('.') else {
            return Verification::Invalid("the token has no signature".into());
        };
        let Ok(signature) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature)
        else {
            // Go's decoder would ignore non-zero trailing bits; no issuer writes them.
            return Verification::Invalid(
                "invalid signature: the signature is not canonical base64url".into(),
            );
        };
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => self.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Verification::UnknownKey(format!(
                "no published service-account key has kid {:?}",
                header.kid.as_deref().unwrap_or_default()
            ));
        }
        let mut wrong_family = None;
        for key in candidates {
            match key.family.algorithm(&header.alg) {
                None => wrong_family = Some(key.family),
                Some(Err(why)) => return Verification::Unverifiable(why),
                Some(Ok(alg)) => {
                    let Some(public) = &key.public else {
                        continue;
                    };
                    let key = signature::UnparsedPublicKey::new(alg, public);
                    if key.verify(message.as_bytes(), &signature).is_ok() {
                        return Verification::Valid;
                    }
                }
            }
        }
        match (wrong_family, header.kid.is_some()) {
            (Some(family), true) => Verification::Invalid(format!(
                "invalid signature: the token says {} but its key is an {} key",
                header.alg,
                family.name()
            )),
            _ => Verification::Invalid(
                "invalid signature: the token is not signed by the service-account issuer's key"
                    .into(),
            ),
        }
    }
}

fn key_from_jwk(jwk: &Jwk) -> Option<Key> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            EllipticCurve::P521 => Family::P521,
            _ => return None,
        },
        _ => return None,
    };
    let b64 = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
    };
    let public = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => Some(rsa_public_key_der(&b64(&rsa.n)?, &b64(&rsa.e)?)),
        // P-521 keys cannot be used by ring; kept so their tokens are recognised (and
        // left to the API server) rather than taken for unknown.
        AlgorithmParameters::EllipticCurve(_) if family == Family::P521 => None,
        AlgorithmParameters::EllipticCurve(ec) => {
            let (x, y) = (b64(&ec.x)?, b64(&ec.y)?);
            let width = if family == Family::P256 { 32 } else { 48 };
            if x.len() != width || y.len() != width {
                return None;
            }
            Some([&[0x04][..], &x, &y].concat())
        }
        _ => return None,
    };
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        public,
    })
}

/// A PKCS#1 RSAPublicKey (`SEQUENCE { INTEGER n, INTEGER e }`), DER, from big-endian parts.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(bytes: &[u8]) -> Vec<u8> {
        let bytes = match bytes.iter().position(|b| *b != 0) {
            Some(i) => &bytes[i..],
            None => &[0][..],
        };
        // A leading 1 bit would read as negative: pad with a zero byte.
        let mut content = if bytes[0] & 0x80 != 0 {
            vec![0]
        } else {
            Vec::new()
        };
        content.extend_from_slice(bytes);
        der_tlv(0x02, &content)
    }
    der_tlv(0x30, &[integer(n), integer(e)].concat())
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The API server's `kid` for a public key: base64url (no padding) of the SHA-256 of
/// its DER SubjectPublicKeyInfo.
pub(crate) fn kid_of_spki(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The PEM blocks of a file as (label, DER).
fn pem_blocks(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN ") {
        rest = &rest[start + 11..];
        let Some(label_end) = rest.find("-----") else {
            break;
        };
        let label = rest[..label_end].to_string();
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest.find(&end_marker) else {
            break;
        };
        let body: String = rest[label_end + 5..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push((label, der));
        }
        rest = &rest[end + end_marker.len()..];
    }
    out
}

/// The key family of a DER SubjectPublicKeyInfo, by its algorithm identifiers.
fn spki_family(der: &[u8]) -> Option<Family> {
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
    let head = &der[..der.len().min(32)];
    let has = |oid: &[u8]| head.windows(oid.len()).any(|w| w == oid);
    if has(RSA) {
        Some(Family::Rsa)
    } else if has(P256) {
        Some(Family::P256)
    } else if has(P384) {
        Some(Family::P384)
    } else if has(P521) {
        Some(Family::P521)
    } else {
        None
    }
}

/// The subjectPublicKey BIT STRING's content of a DER SubjectPublicKeyInfo (what
/// ring verifies with: the PKCS#1 RSA key, or the EC point).
fn spki_key_bits(der: &[u8]) -> Option<&[u8]> {
    // SEQUENCE { SEQUENCE algorithm, BIT STRING key }
    let (_, body) = der_element(der, 0x30)?;
    let (rest, _algorithm) = der_element(body, 0x30)?;
    let (_, bits) = der_element(rest, 0x03)?;
    bits.split_first().map(|(_unused_bits, key)| key)
}

/// Reads one DER element of tag `tag` at the start of `input`: (what follows, its content).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (&rest[len..], &rest[..len]))
}

/// The keys in force, with their refresh policy.
pub struct Keys {
    source: KeySource,
    upstream: Arc<Upstream>,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Serialises refreshes; holds when the last one an unknown `kid` caused finished,
    /// to rate-limit the next (scheduled refreshes do not count against it).
    refresh: tokio::sync::Mutex<Option<Instant>>,
    max_age: RwLock<Duration>,
    ready: tokio::sync::watch::Sender<bool>,
    last_error: RwLock<Option<String>>,
}

impl Keys {
    /// Keys from `source`, not yet loaded (see [`Keys::refresh_now`]).
    pub(crate) fn new(source: KeySource, upstream: Arc<Upstream>) -> Keys {
        Keys {
            source,
            upstream,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
            max_age: RwLock::new(DEFAULT_MAX_AGE),
            ready: tokio::sync::watch::Sender::new(false),
            last_error: RwLock::new(None),
        }
    }

    /// Why the last load failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().expect("keys lock").clone()
    }

    /// Completes once a key set is loaded.
    pub async fn wait_loaded(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Whether a key set is loaded.
    pub fn is_loaded(&self) -> bool {
        *self.ready.borrow()
    }

    /// The loaded set, if any.
    pub(crate) fn current(&self) -> Option<Arc<KeySet>> {
        self.current.read().expect("keys lock").clone()
    }

    /// Loads the keys from their source now; keeps the last good set on failure.
    pub(crate) async fn refresh_now(&self) -> Result<(), KeysError> {
        let _serialised = self.refresh.lock().await;
        self.load().await
    }

    async fn load(&self) -> Result<(), KeysError> {
        match self.fetch().await {
            Ok((set, max_age)) => {
                tracing::info!(kids = ?set.kids(), "service-account issuer keys loaded");
                *self.current.write().expect("keys lock") = Some(Arc::new(set));
                *self.max_age.write().expect("keys lock") = max_age;
                self.ready.send_if_modified(|r| !std::mem::replace(r, true));
                *self.last_error.write().expect("keys lock") = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the service-account issuer keys; keeping the last good ones");
                *self.last_error.write().expect("keys lock") = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Checks `raw`'s signature. On an unknown `kid`, refreshes the keys first, at most
    /// once every [`UNKNOWN_KID_REFRESH_INTERVAL`]: within it, the check waits for the
    /// next refresh rather than refuse, so a key published just after a flood of unknown
    /// `kid`s (which spent the last refresh) verifies its tokens within the interval.
    /// Concurrent callers share one refresh.
    pub(crate) async fn verify(&self, raw: &str, header: &Header) -> Verification {
        let Some(set) = self.current() else {
            return Verification::Unverifiable("the issuer's keys are not loaded".into());
        };
        let verdict = set.verify(raw, header);
        if !matches!(verdict, Verification::UnknownKey(_)) {
            return verdict;
        }
        {
            let mut last = self.refresh.lock().await;
            // Another caller may have refreshed while this one waited for the lock.
            let fresh = self.current().is_some_and(|s| !Arc::ptr_eq(&s, &set));
            if !fresh {
                // Held across the wait: callers behind it share the refresh that follows.
                if let Some(t) = *last {
                    tokio::time::sleep_until(t + UNKNOWN_KID_REFRESH_INTERVAL).await;
                }
                let _ = self.load().await;
                *last = Some(Instant::now());
            }
        }
        match self.current() {
            Some(set) => set.verify(raw, header),
            None => verdict,
        }
    }

    /// Loads the keys now if none are, then refreshes them every `max-age` (what the
    /// source said, at least a minute), and every few seconds while none are loaded.
    /// Runs until the task is aborted.
    pub(crate) async fn refresh_periodically(&self) {
        loop {
            if !self.is_loaded() {
                let _ = self.refresh_now().await;
            }
            let wait = if self.is_loaded() {
                *self.max_age.read().expect("keys lock")
            } else {
                Duration::from_secs(2)
            };
            tokio::time::sleep(wait).await;
            if self.is_loaded() {
                let _ = self.refresh_now().await;
            }
        }
    }

    async fn fetch(&self) -> Result<(KeySet, Duration), KeysError> {
        match &self.source {
            KeySource::Discovery => {
                // The discovery document says who the issuer is and where it publishes its
                // keys; the API server serves the same keys itself at /openid/v1/jwks,
                // whatever jwks_uri it advertises (on EKS or GKE an external OIDC host the
                // gate may have no route or trust to). So the keys come from the API server,
                // over the connection and credential already trusted for TokenReviews.
                let (doc, _) = self
                    .upstream
                    .get("/.well-known/openid-configuration", upstream::JSON)
                    .await?;
                #[derive(serde::Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let doc: Discovery = serde_json::from_slice(&doc).map_err(|e| {
                    KeysError::Invalid(format!("the OIDC discovery document is not usable: {e}"))
                })?;
                tracing::debug!(issuer = %doc.issuer, jwks_uri = %doc.jwks_uri, "OIDC discovery");
                let (jwks, max_age) = self
                    .upstream
                    .get(API_SERVER_JWKS_PATH, JWKS_MEDIA_TYPE)
                    .await?;
                let max_age = max_age
                    .unwrap_or(DEFAULT_MAX_AGE)
                    .clamp(MIN_MAX_AGE, DEFAULT_MAX_AGE);
                Ok((KeySet::from_jwks(&jwks)?, max_age))
            }
            KeySource::JwksFile(path) => {
                let bytes = read(path)?;
                Ok((KeySet::from_jwks(&bytes)?, MIN_MAX_AGE))
            }
            KeySource::PemFiles(paths) => Ok((KeySet::from_pem_files(paths)?, MIN_MAX_AGE)),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeysError> {
    std::fs::read(path).map_err(|e| KeysError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use rcgen::PublicKeyData as _;

    const RSA_PRIVATE: &str = include_str!("../tests/fixtures/rsa-test-key.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/fixtures/rsa-test-key.pub.pem");

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A compact JWS over `{"sub":"x"}` with this header, signed with `key` as `alg`.
    fn sign(header: &str, key: &EncodingKey, alg: Algorithm) -> String {
        let message = format!("{}.{}", b64(header.as_bytes()), b64(br#"{"sub":"x"}"#));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
        format!("{message}.{signature}")
    }

    fn header(alg: &str, kid: Option<&str>) -> Header {
        Header {
            alg: alg.into(),
            kid: kid.map(str::to_owned),
        }
    }

    struct Ec {
        pair: rcgen::KeyPair,
        kid: String,
    }

    fn ec_key() -> Ec {
        let pair = rcgen::KeyPair::generate().unwrap();
        let kid = kid_of_spki(&pair.subject_public_key_info());
        Ec { pair, kid }
    }

    fn jwks(ec: &Ec) -> Vec<u8> {
        let point = ec.pair.public_key_raw();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": ec.kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
        .to_string()
        .into_bytes()
    }

    fn ec_signer(ec: &Ec) -> EncodingKey {
        EncodingKey::from_ec_der(&ec.pair.serialize_der())
    }

    #[test]
    fn an_es256_token_verifies_with_its_published_key_and_nothing_else() {
        let ec = ec_key();
        let set = KeySet::from_jwks(&jwks(&ec)).unwrap();
        let hdr = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, ec.kid);
        let token = sign(&hdr, &ec_signer(&ec), Algorithm::ES256);
        assert_eq!(
            set.verify(&token, &header("ES256", Some(&ec.kid))),
            Verification::Valid
        );

        let other = ec_key();
        let forged = sign(&hdr, &ec_signer(&other), Algorithm::ES256);
        assert!(matches!(
            set.verify(&forged, &header("ES256", Some(&ec.kid))),
            Verification::Invalid(_)
        ));

        let unknown = set.verify(&token, &header("ES256", Some("nope")));
        assert!(matches!(unknown, Verification::UnknownKey(m) if m.contains("\"nope\"")));
    }

    #[test]
    fn a_token_may_only_use_the_algorithm_its_key_is_published_for() {
        let ec = ec_key();
        let set = KeySet::from_jwks(&jwks(&ec)).unwrap();
        let token = sign(r#"{"alg":"ES256"}"#, &ec_signer(&ec), Algorithm::ES256);
        let v = set.verify(&token, &header("RS256", Some(&ec.kid)));
        assert!(
            matches!(v, Verification::Invalid(m) if m.contains("RS256 but its key is an EC P-256 key"))
        );
        // A header without `alg` reads as "" (see `token`): no key verifies it.
        let v = set.verify(&token, &header("", Some(&ec.kid)));
        assert!(matches!(v, Verification::Invalid(_)), "{v:?}");
    }

    #[test]
    fn rsa_keys_from_pem_files_get_the_api_servers_kid_and_verify_rs256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.pub");
        std::fs::write(&path, RSA_PUBLIC).unwrap();
        let set = KeySet::from_pem_files(&[path]).unwrap();
        let der = &pem_blocks(RSA_PUBLIC.as_bytes())[0].1;
        let kid = kid_of_spki(der);
        assert_eq!(set.kids(), vec![kid.clone()]);
        let signer = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            let name = format!("{alg:?}");
            let token = sign(
                &format!(r#"{{"alg":"{name}","kid":"{kid}"}}"#),
                &signer,
                alg,
            );
            assert_eq!(
                set.verify(&token, &header(&name, Some(&kid))),
                Verification::Valid,
                "{name}"
            );
        }
        // A token without kid is tried against every key, as the API server does.
        let token = sign(r#"{"alg":"RS256"}"#, &signer, Algorithm::RS256);
        assert_eq!(
            set.verify(&token, &header("RS256", None)),
            Verification::Valid
        );
    }

    #[test]
    fn rsa_keys_from_a_jwks_verify_rs256() {
        let der = &pem_blocks(RSA_PUBLIC.as_bytes())[0].1;
        let pkcs1 = spki_key_bits(der).unwrap();
        let (_, body) = der_element(pkcs1, 0x30).unwrap();
        let (rest, n) = der_element(body, 0x02).unwrap();
        let (_, e) = der_element(rest, 0x02).unwrap();
        let strip = |b: &[u8]| {
            b.iter()
                .skip_while(|x| **x == 0)
                .copied()
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            rsa_public_key_der(&strip(n), &strip(e)),
            pkcs1,
            "DER rebuilt exactly"
        );
        let doc = serde_json::json!({"keys": [{"kty": "RSA", "kid": "r1", "n": b64(&strip(n)), "e": b64(&strip(e))}]});
        let set = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
        let signer = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let token = sign(r#"{"alg":"RS256","kid":"r1"}"#, &signer, Algorithm::RS256);
        assert_eq!(
            set.verify(&token, &header("RS256", Some("r1"))),
            Verification::Valid
        );
        let tampered = format!("{}x", &token[..token.len() - 1]);
        assert!(matches!(
            set.verify(&tampered, &header("RS256", Some("r1"))),
            Verification::Invalid(_)
        ));
    }

    #[test]
    fn ec_pem_keys_verify_too() {
        let ec = ec_key();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.pub");
        std::fs::write(&path, ec.pair.public_key_pem()).unwrap();
        let set = KeySet::from_pem_files(&[path]).unwrap();
        assert_eq!(set.kids(), vec![ec.kid.clone()]);
        let token = sign(r#"{"alg":"ES256"}"#, &ec_signer(&ec), Algorithm::ES256);
        assert_eq!(
            set.verify(&token, &header("ES256", Some(&ec.kid))),
            Verification::Valid
        );
    }

    #[test]
    fn unusable_key_documents_say_what_is_wrong() {
        assert!(
            KeySet::from_jwks(b"{")
                .unwrap_err()
                .to_string()
                .contains("not valid JSON Web Keys")
        );
        let only_hmac = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        assert!(
            KeySet::from_jwks(only_hmac)
                .unwrap_err()
                .to_string()
                .contains("no RSA or EC public key")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pem");
        std::fs::write(&path, "not pem").unwrap();
        assert!(
            KeySet::from_pem_files(&[path])
                .unwrap_err()
                .to_string()
                .contains("no \"PUBLIC KEY\" PEM block")
        );
    }

    #[test]
    fn a_p521_key_is_recognised_but_left_to_the_api_server() {
        let doc = br#"{"keys":[{"kty":"EC","crv":"P-521","kid":"k521","x":"AQ","y":"AQ"}]}"#;
        let set = KeySet::from_jwks(doc).unwrap();
        let v = set.verify("a.b.c2ln", &header("ES512", Some("k521")));
        assert!(matches!(v, Verification::Unverifiable(_)), "{v:?}");
    }
}
