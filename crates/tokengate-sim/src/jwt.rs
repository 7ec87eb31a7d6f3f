//! The sim's JWT reader: a bearer token read as the API server's service-account
//! authenticators read it before they verify it, written from kube-apiserver's
//! `pkg/serviceaccount` (jwt.go, claims.go, legacy.go) and go-jose v2, and shared with
//! nothing of the gate's, so that a parsing bug in either shows against the other.
//!
//! Responsible for: recognising a token of the sim's issuer or the legacy one (jwt.go's
//! `hasCorrectIssuer`), go-jose's `ParseSigned` (the header, the signature's encoding),
//! decoding the claims into the API server's claim structs as go-jose's JSON decoder does
//! (a key twice in an object, a claim of the wrong JSON type: refused, in its words), and
//! legacy.go's checks of a legacy token's claims.
//!
//! Not responsible for: the signature (`keys`), audiences, times and lookups (`review`).
//! The API server verifies the signature before it decodes the claims; the sim decodes
//! first, so that a test's unsigned token is refused for its claims, in the words the API
//! server uses for the same claims signed. Pure.

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::tokens::{self, LEGACY_ISSUER};

/// go-jose's words for a signature it will not verify.
const CRYPTO_FAILURE: &str = "go-jose/go-jose: error in cryptographic primitive";

/// The longest bearer token the sim reads. Service-account tokens are about 1 KiB; the
/// API server bounds only the request, but a test double need not decode megabytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Go's `base64.RawURLEncoding`, which jwt.go and go-jose decode with: no padding, and
/// the unused low bits of the last character ignored.
const RAW_URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// 2^63: Go converts a float64 this large or larger (either sign) to int64's minimum.
const INT64_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// A service-account JWT of the sim's, read but not verified.
#[derive(Debug)]
pub(crate) struct Token {
    /// `alg` as written: which algorithms verify is the keys' business.
    pub(crate) alg: String,
    /// `kid`; go-jose reads an empty one as none, and then every key is tried.
    pub(crate) kid: Option<String>,
    /// `aud`; empty when absent (the API audiences then stand for it).
    pub(crate) audiences: Vec<String>,
    /// `nbf`, Unix seconds.
    pub(crate) not_before: Option<i64>,
    /// `exp`, Unix seconds.
    pub(crate) expires_at: Option<i64>,
    /// `iat`, Unix seconds.
    pub(crate) issued_at: Option<i64>,
    /// `jti`; empty when absent.
    pub(crate) jti: String,
    /// The service account's namespace.
    pub(crate) namespace: String,
    /// The service account.
    pub(crate) service_account: ObjectRef,
    /// Which validator judges the token.
    pub(crate) kind: Kind,
}

/// The API server's two service-account validators, with what each needs.
#[derive(Debug)]
pub(crate) enum Kind {
    /// claims.go: a TokenRequest token, bound to a pod or a Secret when one is named.
    Projected {
        /// `kubernetes.io.pod`.
        pod: Option<ObjectRef>,
        /// `kubernetes.io.secret`.
        secret: Option<ObjectRef>,
    },
    /// legacy.go: a token that lives as long as Secret `secret` holds it.
    Legacy {
        /// `kubernetes.io/serviceaccount/secret.name`.
        secret: String,
    },
}

/// claims.go's `ref`: an object the token names.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ObjectRef {
    /// `name`.
    #[serde(deserialize_with = "string")]
    pub(crate) name: String,
    /// `uid`; may be empty, for the validator to compare.
    #[serde(deserialize_with = "string")]
    pub(crate) uid: String,
}

/// Why a token was not read.
#[derive(Debug, PartialEq)]
pub(crate) enum Unread {
    /// No service-account authenticator reads it: not a JWT, another issuer, or a JWS
    /// go-jose cannot parse.
    NotOurs,
    /// A token of the sim's issuers, refused for this reason, in the API server's words.
    Refused(String),
}

/// Reads `raw` as the API server's service-account authenticators do up to the
/// signature; `issuer` is the projected tokens' (legacy tokens have their own).
pub(crate) fn read(raw: &str, issuer: &str) -> Result<Token, Unread> {
    if raw.len() > MAX_TOKEN_BYTES {
        return Err(Unread::NotOurs);
    }
    // hasCorrectIssuer: three parts, and an unverified look at the payload's `iss`, read
    // as encoding/json reads it (a repeated key is its last value). Its test for a JSON
    // JWS needs no copy: such a token's first part is no base64url, and fails below.
    let [header, payload, signature] = raw.split('.').collect::<Vec<_>>()[..] else {
        return Err(Unread::NotOurs);
    };
    let payload = RAW_URL.decode(payload).map_err(|_| Unread::NotOurs)?;
    let sniffed: Value = serde_json::from_slice(&payload).map_err(|_| Unread::NotOurs)?;
    let legacy = match sniffed.get("iss").and_then(Value::as_str) {
        Some(LEGACY_ISSUER) => true,
        Some(iss) if iss == issuer => false,
        _ => return Err(Unread::NotOurs),
    };
    let header = parse_header(header).ok_or(Unread::NotOurs)?;
    RAW_URL.decode(signature).map_err(|_| Unread::NotOurs)?;
    // go-jose reads a `crit` header, then refuses to verify the signature (it knows only
    // `b64`, which the API server's tokens never use; the sim refuses any `crit`).
    if header.crit {
        return Err(Unread::Refused(CRYPTO_FAILURE.to_owned()));
    }

    // go-jose's `Claims`: the payload into jwt.Claims, then into the validator's own.
    decode::<UniqueKeys>(&payload)?;
    let public: Public = decode(&payload)?;
    let (namespace, service_account, kind) = if legacy {
        let claims: LegacyClaims = decode(&payload)?;
        legacy_checks(&public.sub, &claims)?;
        let service_account = ObjectRef {
            name: claims.service_account_name,
            uid: claims.service_account_uid,
        };
        let kind = Kind::Legacy {
            secret: claims.secret_name,
        };
        (claims.namespace, service_account, kind)
    } else {
        let claims = decode::<Private>(&payload)?.kubernetes.unwrap_or_default();
        let kind = Kind::Projected {
            pod: claims.pod,
            secret: claims.secret,
        };
        let service_account = claims.serviceaccount.unwrap_or_default();
        (claims.namespace, service_account, kind)
    };
    Ok(Token {
        alg: header.alg,
        kid: header.kid,
        audiences: public.aud,
        not_before: public.nbf,
        expires_at: public.exp,
        issued_at: public.iat,
        jti: public.jti,
        namespace,
        service_account,
        kind,
    })
}

/// The header fields go-jose reads.
struct Header {
    alg: String,
    kid: Option<String>,
    crit: bool,
}

/// go-jose's `ParseSigned` of the header: a JSON object with no key twice, a string
/// `alg`, and a string `kid` or none (`null` and `""` are none). `None` where it fails.
/// (go-jose also reads a header whose `alg` is missing or `null`, then fails to verify
/// it; the sim has always taken such a header for unreadable.)
fn parse_header(segment: &str) -> Option<Header> {
    let json = RAW_URL.decode(segment).ok()?;
    serde_json::from_slice::<UniqueKeys>(&json).ok()?;
    let fields: Map<String, Value> = serde_json::from_slice(&json).ok()?;
    let kid = match fields.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()).filter(|kid| !kid.is_empty()),
        Some(_) => return None,
    };
    Some(Header {
        alg: fields.get("alg")?.as_str()?.to_owned(),
        kid,
        crit: fields.contains_key("crit"),
    })
}

/// legacy.go's checks of the claims, in its order and words. (It splits `sub` and also
/// refuses invalid names there; the sim compares the whole username, which differs only
/// for names no object can have, and then the lookups fail.)
fn legacy_checks(subject: &str, claims: &LegacyClaims) -> Result<(), Unread> {
    for (value, claim) in [
        (subject, "sub"),
        (&claims.namespace, "namespace"),
        (&claims.secret_name, "secretName"),
        (&claims.service_account_name, "serviceAccountName"),
        (&claims.service_account_uid, "serviceAccountUID"),
    ] {
        if value.is_empty() {
            return Err(Unread::Refused(format!("{claim} claim is missing")));
        }
    }
    if subject != tokens::username(&claims.namespace, &claims.service_account_name) {
        return Err(Unread::Refused("sub claim is invalid".to_owned()));
    }
    Ok(())
}

/// go-jose's `jwt.Claims`, which every token's claims are decoded into first (`iss` was
/// read already).
#[derive(Default, Deserialize)]
#[serde(default)]
struct Public {
    #[serde(deserialize_with = "string")]
    sub: String,
    #[serde(deserialize_with = "audience")]
    aud: Vec<String>,
    #[serde(deserialize_with = "numeric_date")]
    exp: Option<i64>,
    #[serde(deserialize_with = "numeric_date")]
    nbf: Option<i64>,
    #[serde(deserialize_with = "numeric_date")]
    iat: Option<i64>,
    #[serde(deserialize_with = "string")]
    jti: String,
}

/// claims.go's `privateClaims`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Private {
    #[serde(rename = "kubernetes.io", deserialize_with = "go_struct")]
    kubernetes: Option<Kubernetes>,
}

/// claims.go's `kubernetes`, the fields the sim's validator reads.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Kubernetes {
    #[serde(deserialize_with = "string")]
    namespace: String,
    #[serde(deserialize_with = "go_struct")]
    serviceaccount: Option<ObjectRef>,
    #[serde(deserialize_with = "go_struct")]
    pod: Option<ObjectRef>,
    #[serde(deserialize_with = "go_struct")]
    secret: Option<ObjectRef>,
}

/// legacy.go's `legacyPrivateClaims`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct LegacyClaims {
    #[serde(
        rename = "kubernetes.io/serviceaccount/namespace",
        deserialize_with = "string"
    )]
    namespace: String,
    #[serde(
        rename = "kubernetes.io/serviceaccount/secret.name",
        deserialize_with = "string"
    )]
    secret_name: String,
    #[serde(
        rename = "kubernetes.io/serviceaccount/service-account.name",
        deserialize_with = "string"
    )]
    service_account_name: String,
    #[serde(
        rename = "kubernetes.io/serviceaccount/service-account.uid",
        deserialize_with = "string"
    )]
    service_account_uid: String,
}

/// Decodes `json` into `T`, refused in go-jose's JSON decoder's words.
fn decode<T: DeserializeOwned>(json: &[u8]) -> Result<T, Unread> {
    serde_json::from_slice(json).map_err(|e| {
        // serde_json appends where it stopped reading; Go's messages do not.
        let message = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        Unread::Refused(
            message
                .strip_suffix(&position)
                .unwrap_or(&message)
                .to_owned(),
        )
    })
}

/// A Go struct type the claims decode into, and its name in Go's errors.
trait GoStruct: DeserializeOwned {
    const GO_TYPE: &'static str;
}

impl GoStruct for Kubernetes {
    const GO_TYPE: &'static str = "serviceaccount.kubernetes";
}

impl GoStruct for ObjectRef {
    const GO_TYPE: &'static str = "serviceaccount.ref";
}

/// A struct (or pointer to one) in Go: `null` leaves it unset, another JSON type is refused.
fn go_struct<'de, D: Deserializer<'de>, T: GoStruct>(d: D) -> Result<Option<T>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        object @ Value::Object(_) => T::deserialize(object).map(Some).map_err(de::Error::custom),
        other => Err(cannot_unmarshal(&other, T::GO_TYPE)),
    }
}

/// A `string` in Go: `null` leaves it empty, another JSON type is refused.
fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s),
        other => Err(cannot_unmarshal(&other, "string")),
    }
}

/// Go's `UnmarshalTypeError`.
fn cannot_unmarshal<E: de::Error>(value: &Value, go_type: &str) -> E {
    let json_type = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    E::custom(format_args!(
        "json: cannot unmarshal {json_type} into Go value of type {go_type}"
    ))
}

/// go-jose's `*NumericDate`: any JSON number, converted to whole seconds as Go converts a
/// float64 to int64 (truncated; out of range, int64's minimum: the distant past).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let seconds = n.as_f64().unwrap_or(f64::NAN);
            Ok(Some(if seconds.abs() < INT64_LIMIT {
                seconds as i64
            } else {
                i64::MIN
            }))
        }
        _ => Err(de::Error::custom(
            "go-jose/go-jose/jwt: expected number value to unmarshal NumericDate",
        )),
    }
}

/// go-jose's `Audience`: a string, or an array of strings. go-jose hands `null` to this
/// decoder too, and refuses it, as the real API server's answer shows.
fn audience<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let refused = || {
        de::Error::custom(
            "go-jose/go-jose/jwt: expected string or array value to unmarshal to Audience",
        )
    };
    match Value::deserialize(d)? {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(refused()),
            })
            .collect(),
        _ => Err(refused()),
    }
}

/// Any JSON whose objects name no key twice. go-jose's decoder refuses a repeated key in
/// the objects it decodes into; the sim refuses one anywhere.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self, A::Error> {
        while items.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = entries.next_key::<String>()? {
            // go-jose checks the key as it reads it, before the value.
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "json: duplicate key '{key}' in object"
                )));
            }
            entries.next_value::<UniqueKeys>()?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{Projected, Ref};
    use serde_json::json;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token of exactly these header and claims texts, with a dummy signature.
    fn jwt(header: &str, claims: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(claims))
    }

    fn claims() -> Value {
        Projected {
            issuer: ISSUER.into(),
            namespace: "ns".into(),
            service_account: Ref {
                name: "app".into(),
                uid: "sa-uid".into(),
            },
            pod: Some(Ref {
                name: "web".into(),
                uid: "pod-uid".into(),
            }),
            audiences: vec!["vault".into()],
            issued_at: 1000,
            expires_at: 4600,
            jti: "j".into(),
        }
        .claims()
    }

    fn with(key: &str, value: Value) -> String {
        let mut claims = claims();
        claims[key] = value;
        claims.to_string()
    }

    fn read_claims(claims: &str) -> Result<Token, Unread> {
        read(&jwt(r#"{"alg":"ES256","kid":"k"}"#, claims), ISSUER)
    }

    fn refused(claims: &str) -> String {
        match read_claims(claims) {
            Err(Unread::Refused(reason)) => reason,
            other => panic!("{claims}: not refused: {other:?}"),
        }
    }

    #[test]
    fn a_projected_token_is_read_with_its_bound_objects() {
        let token = read_claims(&claims().to_string()).expect("read");
        assert_eq!(
            (token.alg.as_str(), token.kid.as_deref()),
            ("ES256", Some("k"))
        );
        assert_eq!(token.audiences, ["vault"]);
        assert_eq!(
            (token.not_before, token.expires_at, token.issued_at),
            (Some(1000), Some(4600), Some(1000))
        );
        assert_eq!((token.namespace.as_str(), token.jti.as_str()), ("ns", "j"));
        assert_eq!(token.service_account.uid, "sa-uid");
        let Kind::Projected {
            pod: Some(pod),
            secret: None,
        } = token.kind
        else {
            panic!("{:?}", token.kind)
        };
        assert_eq!((pod.name.as_str(), pod.uid.as_str()), ("web", "pod-uid"));
    }

    #[test]
    fn a_legacy_token_is_read_whatever_the_projected_issuer() {
        let sa = Ref {
            name: "app".into(),
            uid: "sa-uid".into(),
        };
        let legacy = tokens::legacy_claims("ns", &sa, "app-token-x").to_string();
        let token = read_claims(&legacy).expect("read");
        assert!(matches!(&token.kind, Kind::Legacy { secret } if secret == "app-token-x"));
        assert_eq!(token.service_account.name, "app");
        assert!(token.audiences.is_empty() && token.expires_at.is_none());
    }

    #[test]
    fn what_no_service_account_authenticator_reads_is_not_ours() {
        let claims = claims().to_string();
        let header = r#"{"alg":"ES256"}"#;
        let good = jwt(header, &claims);
        let (h, p) = (b64(header), b64(&claims));
        for raw in [
            "not-a-jwt".to_owned(),
            format!("{good}.x"),
            jwt(header, &with("iss", json!("https://elsewhere"))),
            jwt(header, &with("iss", json!([ISSUER]))),
            format!("{h}.{p}=.c2ln"),
            format!("{h}.{p}.c2ln=="),
            format!(" {good}"),
            format!(
                "{h}.{}.c2ln",
                b64(format!("{claims}{}", " ".repeat(16 * 1024)))
            ),
            jwt(r#"{"alg":"ES256","alg":"none"}"#, &claims),
            jwt(r#"{"alg":"ES256","x":{"a":1,"a":2}}"#, &claims),
            jwt(r#"{"kid":"k"}"#, &claims),
            jwt(r#"{"alg":null}"#, &claims),
            jwt(r#"{"alg":"ES256","kid":7}"#, &claims),
            jwt(r#"["ES256"]"#, &claims),
        ] {
            assert_eq!(
                read(&raw, ISSUER).map(|_| ()),
                Err(Unread::NotOurs),
                "{raw}"
            );
        }
    }

    #[test]
    fn the_header_is_read_as_go_jose_reads_it() {
        let claims = claims().to_string();
        let kid = |header: &str| read(&jwt(header, &claims), ISSUER).expect(header).kid;
        assert_eq!(kid(r#"{"alg":"ES256","kid":""}"#), None);
        assert_eq!(kid(r#"{"alg":"ES256","kid":null}"#), None);
        // Any `alg` is read: the keys refuse the ones they are not for.
        let token = read(&jwt(r#"{"alg":"none"}"#, &claims), ISSUER).expect("read");
        assert_eq!(token.alg, "none");
        // go-jose reads a critical header, then will not verify the signature.
        for crit in [json!(["exp"]), json!(null)] {
            let header = json!({"alg": "ES256", "crit": crit}).to_string();
            assert_eq!(
                read(&jwt(&header, &claims), ISSUER).map(|_| ()),
                Err(Unread::Refused(CRYPTO_FAILURE.into()))
            );
        }
    }

    #[test]
    fn a_key_twice_in_any_object_is_refused_in_go_joses_words() {
        let claims = claims().to_string();
        let twice = |from: &str, to: &str| refused(&claims.replacen(from, to, 1));
        assert_eq!(
            twice("\"exp\":", "\"exp\":1,\"exp\":"),
            "json: duplicate key 'exp' in object"
        );
        assert_eq!(
            twice("\"namespace\":", "\"namespace\":\"x\",\"namespace\":"),
            "json: duplicate key 'namespace' in object"
        );
        assert_eq!(
            twice("\"jti\":", "\"jti\":\"a\",\"\\u006ati\":"),
            "json: duplicate key 'jti' in object"
        );
        // The key is checked as it is read, before its value.
        assert_eq!(
            twice("\"jti\":", "\"x\":1,\"x\":{\"y\":1,\"y\":2},\"jti\":"),
            "json: duplicate key 'x' in object"
        );
        // The unverified look at `iss` keeps the last one; the decoder refuses both.
        assert_eq!(
            twice("\"iss\":", "\"iss\":\"https://elsewhere\",\"iss\":"),
            "json: duplicate key 'iss' in object"
        );
    }

    #[test]
    fn claims_of_the_wrong_json_type_are_refused_as_go_decodes_them() {
        const DATE: &str = "go-jose/go-jose/jwt: expected number value to unmarshal NumericDate";
        const AUDIENCE: &str =
            "go-jose/go-jose/jwt: expected string or array value to unmarshal to Audience";
        let mut pod_array = claims();
        pod_array["kubernetes.io"]["pod"] = json!(["web"]);
        let mut namespace_number = claims();
        namespace_number["kubernetes.io"]["namespace"] = json!(7);
        for (claims, reason) in [
            (with("exp", json!("4600")), DATE),
            (with("nbf", json!(true)), DATE),
            (with("iat", json!({})), DATE),
            (with("aud", json!(7)), AUDIENCE),
            (with("aud", json!(["vault", null])), AUDIENCE),
            (
                with("sub", json!(["x"])),
                "json: cannot unmarshal array into Go value of type string",
            ),
            (
                with("jti", json!(5)),
                "json: cannot unmarshal number into Go value of type string",
            ),
            (
                with("kubernetes.io", json!("x")),
                "json: cannot unmarshal string into Go value of type serviceaccount.kubernetes",
            ),
            (
                pod_array.to_string(),
                "json: cannot unmarshal array into Go value of type serviceaccount.ref",
            ),
            (
                namespace_number.to_string(),
                "json: cannot unmarshal number into Go value of type string",
            ),
        ] {
            assert_eq!(refused(&claims), reason, "{claims}");
        }
    }

    #[test]
    fn null_claims_are_read_as_absent_but_a_null_audience_is_refused() {
        assert_eq!(
            refused(&with("aud", Value::Null)),
            "go-jose/go-jose/jwt: expected string or array value to unmarshal to Audience"
        );
        let token = read_claims(&with("kubernetes.io", Value::Null)).expect("read");
        assert_eq!(token.namespace, "");
        assert!(matches!(
            token.kind,
            Kind::Projected {
                pod: None,
                secret: None
            }
        ));
        let token = read_claims(&with("exp", Value::Null)).expect("read");
        assert_eq!(token.expires_at, None);
        let token = read_claims(&with("aud", json!("vault"))).expect("read");
        assert_eq!(token.audiences, ["vault"]);
    }

    #[test]
    fn times_are_whole_seconds_as_go_converts_a_float() {
        let exp = |text: &str| {
            let claims = claims().to_string().replace("4600", text);
            read_claims(&claims).expect(text).expires_at
        };
        assert_eq!(exp("4600.9"), Some(4600));
        assert_eq!(exp("-0.5"), Some(0));
        assert_eq!(exp("9007199254740993"), Some(9_007_199_254_740_992));
        for huge in [
            "9223372036854775807",
            "18446744073709551616",
            "1e300",
            "-1e300",
        ] {
            assert_eq!(exp(huge), Some(i64::MIN), "{huge}");
        }
    }

    #[test]
    fn a_legacy_tokens_claims_are_checked_in_legacy_go_order() {
        let sa = Ref {
            name: "app".into(),
            uid: "sa-uid".into(),
        };
        let legacy = tokens::legacy_claims("ns", &sa, "app-token-x");
        for (key, missing) in [
            ("sub", "sub"),
            ("kubernetes.io/serviceaccount/namespace", "namespace"),
            ("kubernetes.io/serviceaccount/secret.name", "secretName"),
            (
                "kubernetes.io/serviceaccount/service-account.name",
                "serviceAccountName",
            ),
            (
                "kubernetes.io/serviceaccount/service-account.uid",
                "serviceAccountUID",
            ),
        ] {
            let mut claims = legacy.clone();
            claims[key] = json!("");
            assert_eq!(
                refused(&claims.to_string()),
                format!("{missing} claim is missing")
            );
        }
        let mut claims = legacy;
        claims["sub"] = json!("system:serviceaccount:ns:other");
        assert_eq!(refused(&claims.to_string()), "sub claim is invalid");
    }
}
