//! Key material of the simulated API server: the serving CA and certificate, and the
//! service-account signing keys with their JWKS.
//!
//! Responsible for: generating a CA and a serving certificate for `127.0.0.1`, `localhost`
//! and `::1`; generating P-256 signing keys; deriving each key's `kid` exactly as the API
//! server does (base64url, unpadded, of the SHA-256 of the DER SubjectPublicKeyInfo);
//! signing compact JWS (ES256) and verifying them by `kid`; publishing the JWKS.
//!
//! Not responsible for: what goes into a token (see `tokens`) or whether a token is
//! acceptable (see `review`). Nothing here reads the clock.

use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData as _,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::SimError;

/// The serving identity: a CA (its PEM is what clients trust) and a leaf it signed.
pub(crate) struct Tls {
    /// PEM of the CA certificate.
    pub(crate) ca_pem: String,
    /// rustls configuration serving the leaf (and the CA, as a chain).
    pub(crate) config: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// Generates a fresh CA and a serving certificate for the loopback names.
    pub(crate) fn generate() -> Result<Tls, SimError> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tokengate-sim-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut leaf_params = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "::1".to_owned(),
        ])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "tokengate-sim");
        let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![
            CertificateDer::from(leaf_cert.der().to_vec()),
            CertificateDer::from(ca_cert.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // HTTP/1.1 only: the sim serves with hyper's http1 builder (which lets the
        // `reset` knob take the socket back).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            ca_pem: ca_cert.pem(),
            config: Arc::new(config),
        })
    }
}

/// One P-256 signing key with everything derived from it.
pub(crate) struct SigningKey {
    /// `kid`: base64url(SHA-256(SubjectPublicKeyInfo DER)), as the API server derives it.
    pub(crate) kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// base64url affine x coordinate.
    x: String,
    /// base64url affine y coordinate.
    y: String,
}

impl SigningKey {
    /// Generates a fresh P-256 key.
    pub(crate) fn generate() -> Result<SigningKey, SimError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Self::from_key_pair(&pair)
    }

    fn from_key_pair(pair: &KeyPair) -> Result<SigningKey, SimError> {
        let kid = kid_for_spki(&pair.subject_public_key_info());
        // The raw public key is the uncompressed SEC1 point: 0x04 || x || y.
        let point = pair.public_key_raw();
        let (x, y) = match point {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => return Err(SimError::Key("unexpected P-256 public key encoding".into())),
        };
        let x = URL_SAFE_NO_PAD.encode(x);
        let y = URL_SAFE_NO_PAD.encode(y);
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| SimError::Key(format!("public key rejected: {e}")))?;
        Ok(SigningKey {
            kid,
            encoding: EncodingKey::from_ec_der(pair.serialized_der()),
            decoding,
            x,
            y,
        })
    }

    /// This key as a JWK, the way `/openid/v1/jwks` publishes it.
    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": self.x,
            "y": self.y,
        })
    }
}

/// The API server's key id (`keyIDFromPublicKey`): the SHA-256 of the DER
/// SubjectPublicKeyInfo, base64url without padding.
fn kid_for_spki(spki_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, spki_der))
}

/// The signing keys: the current one signs, every one (current and retired) verifies.
pub(crate) struct Keyring {
    /// Newest first; index 0 signs.
    keys: RwLock<Vec<Arc<SigningKey>>>,
}

/// Why a signature was not accepted, in the API server's words.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SignatureError {
    /// No published key has the token's `kid`.
    NoKeys,
    /// A key was found but the signature does not verify with it.
    Mismatch,
    /// The header names an algorithm the key is not published for.
    Algorithm,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // These are go-jose's and the API server's texts, which `status.error` carries.
        f.write_str(match self {
            SignatureError::NoKeys => "invalid signature, no keys found",
            SignatureError::Mismatch => "square/go-jose: error in cryptographic primitive",
            SignatureError::Algorithm => "square/go-jose: unknown/unsupported algorithm",
        })
    }
}

impl Keyring {
    /// A keyring with one freshly generated key.
    pub(crate) fn generate() -> Result<Keyring, SimError> {
        Ok(Keyring {
            keys: RwLock::new(vec![Arc::new(SigningKey::generate()?)]),
        })
    }

    fn current(&self) -> Arc<SigningKey> {
        // A poisoned lock still holds a valid key list: the writers only push.
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&keys[0])
    }

    /// The `kid` of the key that signs now.
    pub(crate) fn current_kid(&self) -> String {
        self.current().kid.clone()
    }

    /// Makes a new key current; the old ones stay published and keep verifying.
    pub(crate) fn rotate(&self) -> Result<String, SimError> {
        let key = Arc::new(SigningKey::generate()?);
        let kid = key.kid.clone();
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.insert(0, key);
        Ok(kid)
    }

    /// Signs `header` and `claims` (serialized as given) with the current key, ES256.
    pub(crate) fn sign_raw(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> String {
        let key = self.current();
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{claims}");
        // Signing with a key we generated ourselves cannot fail; if the crypto backend
        // ever refuses, an unsigned-looking token is still a (rejected) token.
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, Algorithm::ES256)
                .unwrap_or_default();
        format!("{input}.{signature}")
    }

    /// Signs `claims` under the header the API server writes: `{"alg":"ES256","kid":KID}`.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "ES256", "kid": self.current_kid()});
        self.sign_raw(&header, claims)
    }

    /// Verifies the signature of a compact JWS the way the API server does: keys with the
    /// header's `kid` (all keys when there is none), the algorithm the key is for.
    pub(crate) fn verify(
        &self,
        raw: &str,
        alg: &str,
        kid: Option<&str>,
    ) -> Result<(), SignatureError> {
        let keys: Vec<Arc<SigningKey>> = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            keys.iter()
                .filter(|k| kid.is_none_or(|kid| kid.is_empty() || k.kid == kid))
                .cloned()
                .collect()
        };
        if keys.is_empty() {
            return Err(SignatureError::NoKeys);
        }
        if alg != "ES256" {
            return Err(SignatureError::Algorithm);
        }
        let Some((input, signature)) = raw.rsplit_once('.') else {
            return Err(SignatureError::Mismatch);
        };
        for key in keys {
            if let Ok(true) = jsonwebtoken::crypto::verify(
                signature,
                input.as_bytes(),
                &key.decoding,
                Algorithm::ES256,
            ) {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }

    /// The JWKS document served at `/openid/v1/jwks`.
    pub(crate) fn jwks(&self) -> serde_json::Value {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_is_the_unpadded_base64url_sha256_of_the_spki() {
        // SHA-256("") = e3b0c442...; its base64url form is well known.
        assert_eq!(
            kid_for_spki(b""),
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
        let key = SigningKey::generate().expect("key");
        assert_eq!(key.kid.len(), 43);
        assert!(!key.kid.contains('='));
    }

    #[test]
    fn kid_matches_the_spki_of_the_published_coordinates() {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let key = SigningKey::from_key_pair(&pair).expect("key");
        // Rebuild the SPKI from the JWK's coordinates: the fixed P-256 SPKI prefix, then
        // the uncompressed point.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ];
        spki.extend(URL_SAFE_NO_PAD.decode(&key.x).expect("x"));
        spki.extend(URL_SAFE_NO_PAD.decode(&key.y).expect("y"));
        assert_eq!(spki, pair.subject_public_key_info());
        assert_eq!(key.kid, kid_for_spki(&spki));
    }

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let ring = Keyring::generate().expect("keys");
        let token = ring.sign(&serde_json::json!({"sub": "x"}));
        let kid = ring.current_kid();
        assert_eq!(ring.verify(&token, "ES256", Some(&kid)), Ok(()));
        assert_eq!(ring.verify(&token, "ES256", None), Ok(()));
        assert_eq!(
            ring.verify(&token, "ES256", Some("other")),
            Err(SignatureError::NoKeys)
        );
        assert_eq!(
            ring.verify(&token, "RS256", Some(&kid)),
            Err(SignatureError::Algorithm)
        );
        let tampered = token.replacen('.', ".e30", 1);
        assert_eq!(
            ring.verify(&tampered, "ES256", Some(&kid)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_keys_keep_verifying_after_rotation() {
        let ring = Keyring::generate().expect("keys");
        let old_kid = ring.current_kid();
        let token = ring.sign(&serde_json::json!({"sub": "x"}));
        let new_kid = ring.rotate().expect("rotate");
        assert_ne!(old_kid, new_kid);
        assert_eq!(ring.verify(&token, "ES256", Some(&old_kid)), Ok(()));
        assert_eq!(ring.jwks()["keys"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn header_is_alg_then_kid() {
        let ring = Keyring::generate().expect("keys");
        let token = ring.sign(&serde_json::json!({}));
        let header = token.split('.').next().expect("header");
        let header = String::from_utf8(URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("utf8");
        assert_eq!(
            header,
            format!(r#"{{"alg":"ES256","kid":"{}"}}"#, ring.current_kid())
        );
    }
}
