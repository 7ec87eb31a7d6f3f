//! Service-account JWT parsing and the API server's local rules.
//!
//! Responsible for: reading a bearer token the way the API server's JOSE library reads it
//! (strict where it is: a key twice in what it decodes, a wrong type, a `crit` extension
//! it does not implement make a token invalid), classifying it (a service-account JWT of
//! a known issuer, legacy or projected, or something else), and the checks the API
//! server makes before it looks anything up: issuer, `exp`/`nbf`/`iat` with its 60 s
//! leeway, audience intersection.
//!
//! Not responsible for: signatures, policy (legacy tokens, configured audiences), I/O.
//! Everything here is pure; the clock is a parameter. Local checks only ever *reject*:
//! an accepted token is still sent to the API server.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The issuer the API server puts in legacy (Secret-based) service-account tokens.
pub(crate) const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// The clock skew the API server allows on `exp`, `nbf` and `iat` (go-jose's `DefaultLeeway`).
pub const LEEWAY_SECONDS: i64 = 60;

/// The longest token this gate reads. Service-account tokens are about 1 KiB; anything
/// much larger is not one, and reading it costs memory for nothing.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The words the API server's bearer-token authenticator answers with when no
/// authenticator could read a token; a service-account authenticator's own refusal is
/// wrapped in them (see [`wrapped`]).
pub(crate) const INVALID_BEARER_TOKEN: &str = "invalid bearer token";

/// go-jose's words for a signature that does not verify with the key tried, whatever
/// the reason (another key, another algorithm, `none`, no signature at all).
pub(crate) const CRYPTO_FAILURE: &str = "go-jose/go-jose: error in cryptographic primitive";

/// The API server's words for a token whose `kid` names no published key.
pub(crate) const NO_KEYS_FOUND: &str = "invalid signature, no keys found";

/// `status.error` for a service-account token the API server refused for `reason`:
/// `[invalid bearer token, <reason>]`, as its union of authenticators reports it.
pub(crate) fn wrapped(reason: &str) -> String {
    format!("[{INVALID_BEARER_TOKEN}, {reason}]")
}

/// Go converts a float beyond int64 to int64's minimum (amd64), so go-jose reads such a
/// time as the distant past.
const INT64_RANGE: f64 = 9_223_372_036_854_775_808.0;

/// Go's `base64.RawURLEncoding`: no padding, trailing bits ignored.
const RAW_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// What a bearer token is, as far as the service-account authenticator is concerned.
#[derive(Debug)]
pub enum Classified {
    /// A service-account JWT of a known issuer, parsed strictly.
    ServiceAccount(Box<ServiceAccountToken>),
    /// Not a service-account JWT of a known issuer (another issuer, not a JWT, a bootstrap
    /// or static token). Only the API server's other authenticators can know it. The
    /// string says why it was not taken for a service-account token.
    Foreign(String),
}

/// Which kind of service-account token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A projected (TokenRequest) token: audience- and time-bound.
    Projected,
    /// A legacy token stored in a Secret: no `exp`, no `aud`.
    Legacy,
}

/// The JOSE header fields that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `alg`, as written (empty when absent or null, as go-jose reads it): which
    /// algorithms verify is the key's business (`keys`).
    pub alg: String,
    /// `kid`, when present.
    pub(crate) kid: Option<String>,
}

/// A reference to a Kubernetes object in the token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectRef {
    /// The object's name.
    pub(crate) name: String,
    /// The object's UID (empty for a legacy token's Secret, which names no UID).
    pub(crate) uid: String,
}

/// The claims of a service-account token, normalised across the projected and legacy layouts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// `iss`.
    pub issuer: String,
    /// `sub`, when present.
    pub subject: Option<String>,
    /// `aud` (a string or an array in the token; empty when absent).
    pub audiences: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: Option<i64>,
    /// `nbf`, Unix seconds.
    pub not_before: Option<i64>,
    /// `iat`, Unix seconds.
    pub issued_at: Option<i64>,
    /// `jti`.
    pub jti: Option<String>,
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: ObjectRef,
    /// The pod the token is bound to.
    pub pod: Option<ObjectRef>,
    /// The Secret a legacy token is stored in, or a Secret a projected token is bound to.
    pub secret: Option<ObjectRef>,
}

/// A strictly parsed service-account token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountToken {
    /// The JOSE header.
    pub header: Header,
    /// The claims.
    pub claims: Claims,
    /// Projected or legacy.
    pub kind: Kind,
}

impl ServiceAccountToken {
    /// The username the API server gives this token's subject: `system:serviceaccount:NS:NAME`.
    pub fn username(&self) -> String {
        service_account_username(&self.claims.namespace, &self.claims.service_account.name)
    }
}

/// `system:serviceaccount:NS:NAME`, the API server's username for a service account.
pub(crate) fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Why a token was rejected without asking the API server. `Display` gives the reason a
/// person can act on, in the API server's wording where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("token is {len} bytes, more than the {max} bytes a service-account token can be")]
    TooLarge {
        /// The token's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token names a known issuer but is not a well-formed service-account JWT.
    #[error("malformed service account token: {detail}")]
    Malformed {
        /// What is wrong, for a person.
        detail: String,
        /// Why the API server's service-account authenticator refuses it, in its words;
        /// `None` when its JOSE parser cannot read the token at all.
        reason: Option<String>,
    },
    /// `exp` plus the leeway lies in the past.
    #[error("service account token has expired: it expired at {} ({} ago)", rfc3339(*.expires_at), ago(*.now, *.expires_at))]
    Expired {
        /// `exp`.
        expires_at: i64,
        /// The time of the check.
        now: i64,
    },
    /// `nbf` lies further in the future than the leeway.
    #[error("service account token is not valid yet: it is valid from {} (in {})", rfc3339(*.not_before), ago(*.not_before, *.now))]
    NotYetValid {
        /// `nbf`.
        not_before: i64,
        /// The time of the check.
        now: i64,
    },
    /// `iat` lies further in the future than the leeway.
    #[error("service account token is issued in the future: issued at {} ({} from now)", rfc3339(*.issued_at), ago(*.issued_at, *.now))]
    IssuedInTheFuture {
        /// `iat`.
        issued_at: i64,
        /// The time of the check.
        now: i64,
    },
    /// No audience of the token is among the requested ones (the API server's wording).
    #[error("token audiences {} is invalid for the target audiences {}", go_quote(.token), go_quote(.requested))]
    Audience {
        /// The token's audiences.
        token: Vec<String>,
        /// The requested audiences.
        requested: Vec<String>,
    },
    /// A legacy token's `sub` names another user than its other claims (the projected
    /// validator ignores `sub`).
    #[error(
        "service account token subject {subject:?} does not match its service account claims ({expected:?})"
    )]
    SubjectMismatch {
        /// `sub`.
        subject: String,
        /// What the `kubernetes.io` claims name.
        expected: String,
    },
    /// A legacy token, and the policy does not accept them.
    #[error(
        "legacy service account token for {username} is not accepted: it never expires and is not bound to an audience; \
         use a projected token (TokenRequest or a serviceAccountToken volume), or set policy.allow_legacy_tokens = true"
    )]
    LegacyNotAllowed {
        /// The token's service account.
        username: String,
    },
    /// Not a service-account token, and the requested audiences are not the API server's own:
    /// the API server could not authenticate it for them either.
    #[error(
        "{why}; such a token can only be valid for the API server's own audiences {}, not for {}",
        go_quote(.api_audiences), go_quote(.requested)
    )]
    ForeignAudience {
        /// Why it is not a service-account token.
        why: String,
        /// The API server's audiences.
        api_audiences: Vec<String>,
        /// The requested audiences.
        requested: Vec<String>,
    },
}

impl Rejection {
    /// A token the API server's JOSE parser cannot read: no authenticator takes it.
    fn unreadable(detail: impl Into<String>) -> Rejection {
        Rejection::Malformed {
            detail: detail.into(),
            reason: None,
        }
    }

    /// A token the service-account authenticator refuses with `reason`.
    fn refused(detail: impl Into<String>, reason: &str) -> Rejection {
        Rejection::Malformed {
            detail: detail.into(),
            reason: Some(reason.to_owned()),
        }
    }

    /// What the API server answers for this token in `status.error`, word for word.
    /// [`Display`](fmt::Display) says more, for logs and `tokengate inspect`.
    pub(crate) fn status_error(&self) -> String {
        match self {
            Rejection::TooLarge { .. } | Rejection::ForeignAudience { .. } => {
                INVALID_BEARER_TOKEN.to_owned()
            }
            Rejection::Malformed { reason: None, .. } => INVALID_BEARER_TOKEN.to_owned(),
            Rejection::Malformed {
                reason: Some(reason),
                ..
            } => wrapped(reason),
            Rejection::Expired { .. } => wrapped("service account token has expired"),
            Rejection::NotYetValid { .. } => wrapped("service account token is not valid yet"),
            Rejection::IssuedInTheFuture { .. } => {
                wrapped("service account token is issued in the future")
            }
            Rejection::Audience { .. } => wrapped(&self.to_string()),
            Rejection::SubjectMismatch { .. } => wrapped("sub claim is invalid"),
            // tokengate's own policy: the API server has no words for it.
            Rejection::LegacyNotAllowed { .. } => self.to_string(),
        }
    }
}

/// Classifies and strictly parses a bearer token.
///
/// `issuers` are the service-account issuers the API server accepts (empty = any);
/// [`LEGACY_ISSUER`] is always recognised. A token that claims one of them but breaks the
/// JOSE rules is rejected; a token that claims none is [`Classified::Foreign`].
pub fn classify(raw: &str, issuers: &[String]) -> Result<Classified, Rejection> {
    if raw.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::TooLarge {
            len: raw.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    if raw.trim_start().starts_with('{') {
        return Ok(Classified::Foreign("token is JSON, not a JWT".into()));
    }
    let mut parts = raw.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        let segments = raw.split('.').count();
        return Ok(Classified::Foreign(format!(
            "token is not a JWT (it has {segments} dot-separated segment{}, a JWT has 3)",
            if segments == 1 { "" } else { "s" }
        )));
    };

    // The API server first sniffs `iss` from the unverified payload; only tokens of its
    // issuers go on to the JOSE parser.
    let Ok(payload) = RAW_URL.decode(payload) else {
        return Ok(Classified::Foreign("token payload is not base64url".into()));
    };
    let issuer = match sniff_issuer(&payload) {
        Some(iss) if iss == LEGACY_ISSUER || issuers.is_empty() || issuers.contains(&iss) => iss,
        Some(iss) => {
            return Ok(Classified::Foreign(format!(
                "token issuer {iss:?} is not a service-account issuer of this cluster"
            )));
        }
        None => {
            return Ok(Classified::Foreign(
                "token payload is not a JSON object with a string \"iss\" claim".into(),
            ));
        }
    };

    // go-jose's ParseSigned: a header and a signature it cannot decode make the token
    // unreadable; an empty signature is read, and fails verification.
    if RAW_URL.decode(signature).is_err() {
        return Err(Rejection::unreadable("signature is not base64url"));
    }
    let header = parse_header(header)?;
    let kind = if issuer == LEGACY_ISSUER {
        Kind::Legacy
    } else {
        Kind::Projected
    };
    let claims = read_claims(&payload, kind)?;
    let claims = parse_claims(&claims, issuer, kind)?;
    let token = ServiceAccountToken {
        header,
        claims,
        kind,
    };
    Ok(Classified::ServiceAccount(Box::new(token)))
}

/// The API server's checks of a parsed token against the requested audiences at `now`:
/// the audience intersection, then `nbf`, `exp`, `iat` with [`LEEWAY_SECONDS`]. A token
/// without audiences (legacy) stands for `api_audiences`. Returns the audiences the token
/// is valid for among the requested ones.
pub fn check(
    token: &ServiceAccountToken,
    requested: &[String],
    api_audiences: &[String],
    now: SystemTime,
) -> Result<Vec<String>, Rejection> {
    let now = unix_seconds(now);
    let claims = &token.claims;
    // The API server checks the audience first, then the times (jwt.go, then claims.go).
    let token_audiences = if claims.audiences.is_empty() {
        api_audiences
    } else {
        &claims.audiences
    };
    let valid = intersect(token_audiences, requested);
    if valid.is_empty() {
        return Err(Rejection::Audience {
            token: token_audiences.to_vec(),
            requested: requested.to_vec(),
        });
    }
    // Go: `now.Add(leeway).Before(nbf)`, `now.Add(-leeway).After(exp)`; times are whole seconds.
    if let Some(not_before) = claims.not_before
        && now.saturating_add(LEEWAY_SECONDS) < not_before
    {
        return Err(Rejection::NotYetValid { not_before, now });
    }
    if let Some(expires_at) = claims.expires_at
        && now.saturating_sub(LEEWAY_SECONDS) > expires_at
    {
        return Err(Rejection::Expired { expires_at, now });
    }
    if let Some(issued_at) = claims.issued_at
        && now.saturating_add(LEEWAY_SECONDS) < issued_at
    {
        return Err(Rejection::IssuedInTheFuture { issued_at, now });
    }
    if token.kind == Kind::Projected {
        unnamed_objects(claims)?;
    }
    Ok(valid)
}

/// The validator's lookups that fail for the token alone, before any object is read
/// (`claims.go`: the service account by namespace and name, then the bound Secret, then
/// the bound pod); a UID the API server must compare with the object's is left to it.
fn unnamed_objects(claims: &Claims) -> Result<(), Rejection> {
    if claims.service_account.name.is_empty() {
        return Err(Rejection::refused(
            "no service account name in the \"kubernetes.io\" claim",
            "resource name may not be empty",
        ));
    }
    if claims.namespace.is_empty() {
        return Err(Rejection::refused(
            "no namespace in the \"kubernetes.io\" claim",
            "the server could not find the requested resource",
        ));
    }
    let unnamed = |o: &Option<ObjectRef>| o.as_ref().is_some_and(|o| o.name.is_empty());
    if unnamed(&claims.secret) || unnamed(&claims.pod) {
        return Err(Rejection::refused(
            "a bound object in the \"kubernetes.io\" claim has no name",
            "service account token has been invalidated",
        ));
    }
    Ok(())
}

/// The members of `a` that are also in `b`, in `a`'s order (the API server's `Audiences.Intersect`).
pub(crate) fn intersect(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().filter(|x| b.contains(x)).cloned().collect()
}

/// Seconds since the Unix epoch (negative before it), saturating.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// A Unix time as RFC 3339, for messages (`2026-11-28T10:00:00Z`).
pub(crate) fn rfc3339(seconds: i64) -> String {
    u64::try_from(seconds)
        .ok()
        .filter(|&s| s < 253_402_300_800) // year 10000: past RFC 3339, humantime fails (and to_string panics)
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .map_or_else(
            || format!("@{seconds}"),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
}

/// `later - earlier` in human form (`5m 3s`), for messages.
fn ago(later: i64, earlier: i64) -> String {
    let secs = later.saturating_sub(earlier).max(0).unsigned_abs();
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quote(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// `iss` as the API server sniffs it: the payload as lenient JSON, `iss` as a string.
fn sniff_issuer(payload: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(payload).ok()? {
        Value::Object(mut map) => match map.remove("iss")? {
            Value::String(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn parse_header(segment: &str) -> Result<Header, Rejection> {
    let bytes = RAW_URL
        .decode(segment)
        .map_err(|_| Rejection::unreadable("header is not base64url"))?;
    // go-jose decodes every header value, so a key twice anywhere makes it unreadable.
    let header =
        strict_object(&bytes).map_err(|e| Rejection::unreadable(format!("header: {e}")))?;
    // Which algorithms verify is the key's business (see `keys`): the API server reads
    // any `alg` here and refuses the wrong ones when it verifies. go-jose skips a null
    // header value, so a null or missing `alg` is "", which no key verifies.
    let alg = match header.get("alg") {
        None | Some(Value::Null) => "",
        Some(Value::String(alg)) => alg,
        Some(_) => return Err(Rejection::unreadable("header \"alg\" is not a string")),
    };
    // go-jose reads an empty `kid` as none: the API server then tries every key.
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()).filter(|k| !k.is_empty()),
        Some(_) => return Err(Rejection::unreadable("header \"kid\" is not a string")),
    };
    // A header go-jose can read; `crit` is read when it verifies, before anything else.
    critical(header.get("crit"))?;
    Ok(Header {
        alg: alg.to_owned(),
        kid,
    })
}

/// go-jose's check of `crit`, made before the signature's: the value is decoded into a
/// `[]string` (null is none), and every name in it must be one go-jose implements (only
/// `b64`), else it refuses to verify.
fn critical(crit: Option<&Value>) -> Result<(), Rejection> {
    let not_strings = |v: &Value, go_type: &str| {
        Rejection::refused(
            format!(
                "header \"crit\" is not a list of names (a {} where go-jose reads a {go_type})",
                go_kind(v)
            ),
            &format!(
                "json: cannot unmarshal {} into Go value of type {go_type}",
                go_kind(v)
            ),
        )
    };
    let names = match crit {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(names)) => names,
        Some(v) => return Err(not_strings(v, "[]string")),
    };
    // Go's decoder stops at a number in the list, but reads on past other wrong types
    // and reports the first of them. A null name is "".
    let mut wrong = None;
    for name in names {
        match name {
            Value::String(_) | Value::Null => {}
            Value::Number(_) => {
                wrong = Some(name);
                break;
            }
            _ => {
                wrong.get_or_insert(name);
            }
        }
    }
    if let Some(v) = wrong {
        return Err(not_strings(v, "string"));
    }
    if let Some(name) = names.iter().find(|n| n.as_str() != Some("b64")) {
        return Err(Rejection::refused(
            format!("header \"crit\" names {name}, an extension go-jose does not implement"),
            CRYPTO_FAILURE,
        ));
    }
    Ok(())
}

type Object = serde_json::Map<String, Value>;

/// The JSON type of `v` as Go's decoder names it in an `UnmarshalTypeError`.
fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A claim of the wrong JSON type for the Go type `go_type` it decodes into.
fn wrong_type(what: &str, v: &Value, go_type: &str) -> Rejection {
    Rejection::refused(
        format!("claim {what:?} is a {}, not a {go_type}", go_kind(v)),
        &format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            go_kind(v)
        ),
    )
}

fn parse_claims(claims: &Object, issuer: String, kind: Kind) -> Result<Claims, Rejection> {
    let mut out = Claims {
        issuer,
        subject: optional_string(claims, "sub")?,
        audiences: audiences(claims.get("aud"))?,
        expires_at: numeric_date(claims, "exp")?,
        not_before: numeric_date(claims, "nbf")?,
        issued_at: numeric_date(claims, "iat")?,
        jti: optional_string(claims, "jti")?,
        ..Claims::default()
    };
    match kind {
        Kind::Projected => {
            // Absent or null: Go's zero value, whose empty names fail the lookups later.
            let empty = Object::new();
            let k = match claims.get("kubernetes.io") {
                None | Some(Value::Null) => &empty,
                Some(Value::Object(k)) => k,
                Some(v) => return Err(wrong_type("kubernetes.io", v, "serviceaccount.kubernetes")),
            };
            out.namespace = optional_string(k, "namespace")?.unwrap_or_default();
            out.service_account = object_ref(k, "serviceaccount")?.unwrap_or_default();
            out.pod = object_ref(k, "pod")?;
            out.secret = object_ref(k, "secret")?;
        }
        Kind::Legacy => {
            // legacy.go's order, each in its words.
            const P: &str = "kubernetes.io/serviceaccount/";
            let field = |name: &str, missing: &str| -> Result<String, Rejection> {
                let key = format!("{P}{name}");
                match optional_string(claims, &key)? {
                    Some(v) if !v.is_empty() => Ok(v),
                    _ => Err(Rejection::refused(
                        format!("legacy claim {key:?} is missing"),
                        &format!("{missing} claim is missing"),
                    )),
                }
            };
            if out.subject.as_deref().unwrap_or_default().is_empty() {
                return Err(Rejection::refused(
                    "legacy claim \"sub\" is missing",
                    "sub claim is missing",
                ));
            }
            out.namespace = field("namespace", "namespace")?;
            let secret = field("secret.name", "secretName")?;
            out.service_account = ObjectRef {
                name: field("service-account.name", "serviceAccountName")?,
                uid: field("service-account.uid", "serviceAccountUID")?,
            };
            out.secret = Some(ObjectRef {
                name: secret,
                uid: String::new(),
            });
            let expected = service_account_username(&out.namespace, &out.service_account.name);
            if out.subject.as_deref() != Some(expected.as_str()) {
                return Err(Rejection::SubjectMismatch {
                    subject: out.subject.unwrap_or_default(),
                    expected,
                });
            }
        }
    }
    Ok(out)
}

fn object_ref(k: &Object, key: &str) -> Result<Option<ObjectRef>, Rejection> {
    match k.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(ObjectRef {
            name: optional_string(o, "name")?.unwrap_or_default(),
            uid: optional_string(o, "uid")?.unwrap_or_default(),
        })),
        Some(v) => Err(wrong_type(
            &format!("kubernetes.io.{key}"),
            v,
            "serviceaccount.ref",
        )),
    }
}

fn optional_string(o: &Object, key: &str) -> Result<Option<String>, Rejection> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(wrong_type(key, v, "string")),
    }
}

/// go-jose's `Audience`: a string or an array of strings (not null).
fn audiences(value: Option<&Value>) -> Result<Vec<String>, Rejection> {
    let refused = || {
        Rejection::refused(
            "claim \"aud\" is neither a string nor an array of strings",
            "go-jose/go-jose/jwt: expected string or array value to unmarshal to Audience",
        )
    };
    // A null `aud` reaches go-jose's decoder too, which takes it for neither.
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(refused))
            .collect(),
        Some(_) => Err(refused()),
    }
}

/// go-jose's `NumericDate`: any JSON number, truncated to whole seconds as Go converts a
/// float to int64 (beyond its range: the minimum, the distant past).
fn numeric_date(o: &Object, key: &str) -> Result<Option<i64>, Rejection> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::INFINITY);
            if !v.is_finite() || v.abs() >= INT64_RANGE {
                return Ok(Some(i64::MIN));
            }
            #[allow(
                clippy::cast_possible_truncation,
                reason = "range checked above; go-jose truncates too"
            )]
            Ok(Some(v.trunc() as i64))
        }
        Some(_) => Err(Rejection::refused(
            format!("claim {key:?} is not a number"),
            "go-jose/go-jose/jwt: expected number value to unmarshal NumericDate",
        )),
    }
}

/// Parses a JSON object, refusing a key twice in any object of it, as go-jose's decoder
/// does in everything it decodes (the error then is `duplicate key 'KEY' in object`).
fn strict_object(bytes: &[u8]) -> Result<Object, String> {
    let (object, duplicates) = read_object(bytes)?;
    match duplicates.first() {
        Some(d) => Err(d.message()),
        None => Ok(object),
    }
}

/// A token's claims as go-jose decodes them: a key twice in an object it reads makes
/// the token invalid in its JSON decoder's words; one in a value it skips does not.
fn read_claims(payload: &[u8], kind: Kind) -> Result<Object, Rejection> {
    let (claims, duplicates) =
        read_object(payload).map_err(|e| Rejection::unreadable(format!("claims: {e}")))?;
    // The API server decodes the claims twice, the registered ones first: of the
    // duplicates, the first each decoding meets, in that order.
    let first = duplicates
        .iter()
        .filter_map(|d| Some((decoding(&d.path, kind)?, d)))
        .min_by_key(|(decoding, _)| *decoding);
    match first {
        Some((_, d)) => Err(Rejection::refused(
            format!("claims: {}", d.message()),
            &format!("json: {}", d.message()),
        )),
        None => Ok(claims),
    }
}

/// Which of the API server's two decodings of the claims reads an object, in their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Decoding {
    /// Into go-jose's registered claims: the claims object, and `aud`, which go-jose
    /// decodes as any JSON value, so every object in it.
    Registered,
    /// Into the service-account authenticator's private claims: for a projected token,
    /// `kubernetes.io` and the objects of its fields (a legacy token's are at the top).
    Private,
}

/// The decoding that reads the object at `path` of the claims, if any: Go's decoder
/// skips the value of a key its struct has no field for unread.
fn decoding(path: &[Step], kind: Kind) -> Option<Decoding> {
    /// The fields of `kubernetes.io` that Go decodes from an object.
    const OBJECTS: &[&str] = &[
        "serviceaccount",
        "pod",
        "secret",
        "node",
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
        "attestations",
    ];
    let is =
        |step: &Step, names: &[&str]| matches!(step, Step::Key(k) if names.contains(&k.as_str()));
    let projected = kind == Kind::Projected;
    match path {
        [] => Some(Decoding::Registered),
        [aud, ..] if is(aud, &["aud"]) => Some(Decoding::Registered),
        [k] if projected && is(k, &["kubernetes.io"]) => Some(Decoding::Private),
        [k, field] if projected && is(k, &["kubernetes.io"]) && is(field, OBJECTS) => {
            Some(Decoding::Private)
        }
        _ => None,
    }
}

/// One step from a JSON document's root towards a value in it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// The value of this key of an object.
    Key(String),
    /// An element of an array.
    Element,
}

/// A key found a second time in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Duplicate {
    /// Where the object lies.
    path: Vec<Step>,
    /// The key.
    key: String,
}

impl Duplicate {
    /// go-jose's JSON decoder's words for it.
    fn message(&self) -> String {
        format!("duplicate key '{}' in object", self.key)
    }
}

/// Parses a JSON object (a repeated key's last value wins) and notes every key an
/// object repeats, in the order of the text, for the caller to judge.
fn read_object(bytes: &[u8]) -> Result<(Object, Vec<Duplicate>), String> {
    let mut notes = Notes::default();
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let value = Noting(&mut notes)
        .deserialize(&mut reader)
        .and_then(|v| reader.end().map(|()| v))
        .map_err(|e| format!("invalid JSON ({e})"))?;
    match value {
        Value::Object(object) => Ok((object, notes.duplicates)),
        _ => Err("not a JSON object".into()),
    }
}

/// What [`Noting`] keeps while it reads: where it is, and the duplicates so far.
#[derive(Default)]
struct Notes {
    path: Vec<Step>,
    duplicates: Vec<Duplicate>,
}

/// Reads a JSON value as serde_json's `Value`, noting repeated keys in [`Notes`].
struct Noting<'a>(&'a mut Notes);

impl<'de> DeserializeSeed<'de> for Noting<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Noting<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        self.0.path.push(Step::Element);
        while let Some(v) = seq.next_element_seed(Noting(&mut *self.0))? {
            items.push(v);
        }
        self.0.path.pop();
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Object::new();
        while let Some(key) = map.next_key::<String>()? {
            // Go's decoder sees the repeat at the key, before it reads the value.
            if object.contains_key(&key) {
                self.0.duplicates.push(Duplicate {
                    path: self.0.path.clone(),
                    key: key.clone(),
                });
            }
            self.0.path.push(Step::Key(key.clone()));
            let value = map.next_value_seed(Noting(&mut *self.0))?;
            self.0.path.pop();
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    const NOW: i64 = 1_795_860_000; // 2026-11-28T10:00:00Z

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn jwt_raw(header: &str, claims: &str) -> String {
        format!("{}.{}.c2lnbmF0dXJl", b64(header), b64(claims))
    }

    fn jwt(claims: &Value) -> String {
        jwt_raw(r#"{"alg":"ES256","kid":"k1"}"#, &claims.to_string())
    }

    fn projected() -> Value {
        json!({
            "aud": ["vault"], "exp": NOW + 3600, "iat": NOW - 10, "nbf": NOW - 10, "iss": ISS,
            "jti": "8d1f", "sub": "system:serviceaccount:apps:web",
            "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "web", "uid": "sa-1"},
                              "pod": {"name": "web-0", "uid": "pod-1"}}
        })
    }

    fn issuers() -> Vec<String> {
        vec![ISS.to_string()]
    }

    fn sa(raw: &str) -> Result<ServiceAccountToken, Rejection> {
        match classify(raw, &issuers())? {
            Classified::ServiceAccount(t) => Ok(*t),
            Classified::Foreign(why) => panic!("unexpectedly foreign: {why}"),
        }
    }

    fn foreign(raw: &str) -> String {
        match classify(raw, &issuers()) {
            Ok(Classified::Foreign(why)) => why,
            other => panic!("expected foreign, got {other:?}"),
        }
    }

    fn at(seconds: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    }

    fn aud(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    #[test]
    fn projected_token_is_parsed_with_its_bound_objects() {
        let t = sa(&jwt(&projected())).unwrap();
        assert_eq!(t.kind, Kind::Projected);
        assert_eq!(
            t.header,
            Header {
                alg: "ES256".into(),
                kid: Some("k1".into())
            }
        );
        assert_eq!(t.claims.audiences, aud(&["vault"]));
        assert_eq!(t.claims.expires_at, Some(NOW + 3600));
        assert_eq!(
            t.claims.service_account,
            ObjectRef {
                name: "web".into(),
                uid: "sa-1".into()
            }
        );
        assert_eq!(
            t.claims.pod,
            Some(ObjectRef {
                name: "web-0".into(),
                uid: "pod-1".into()
            })
        );
        assert_eq!(t.username(), "system:serviceaccount:apps:web");
    }

    #[test]
    fn legacy_token_is_recognised_whatever_the_configured_issuers() {
        let claims = json!({
            "iss": LEGACY_ISSUER, "sub": "system:serviceaccount:apps:web",
            "kubernetes.io/serviceaccount/namespace": "apps",
            "kubernetes.io/serviceaccount/secret.name": "web-token-x",
            "kubernetes.io/serviceaccount/service-account.name": "web",
            "kubernetes.io/serviceaccount/service-account.uid": "sa-1"
        });
        let t = sa(&jwt(&claims)).unwrap();
        assert_eq!(t.kind, Kind::Legacy);
        assert_eq!(t.claims.secret.as_ref().unwrap().name, "web-token-x");
        assert!(t.claims.audiences.is_empty() && t.claims.expires_at.is_none());
    }

    #[test]
    fn tokens_of_other_issuers_and_non_jwts_are_foreign() {
        assert!(
            foreign(&jwt(&with(projected(), "iss", json!("https://evil"))))
                .contains("\"https://evil\"")
        );
        assert!(foreign("abc").contains("1 dot-separated segment,"));
        assert!(foreign("a.b.c.d").contains("4 dot-separated segments"));
        assert!(foreign("a.!!!.c").contains("base64url"));
        // An issuer given as an array is no string issuer: the API server's sniff fails too.
        assert!(foreign(&jwt(&with(projected(), "iss", json!([ISS])))).contains("string \"iss\""));
        assert!(foreign(&format!(" {{{}", jwt(&projected()))).contains("JSON"));
        // Padding: Go's RawURLEncoding refuses it, so the API server does not see an issuer.
        let padded = format!("{}.{}=.c2ln", b64("{}"), b64(&projected().to_string()));
        foreign(&padded);
    }

    #[test]
    fn empty_issuer_list_accepts_any_issuer() {
        let raw = jwt(&with(projected(), "iss", json!("https://other")));
        assert!(matches!(
            classify(&raw, &[]),
            Ok(Classified::ServiceAccount(_))
        ));
    }

    #[test]
    fn duplicate_keys_where_go_jose_decodes_make_the_token_invalid_in_its_words() {
        let dup_exp = format!(r#"{{"iss":"{ISS}","exp":1,"exp":{}}}"#, NOW + 100);
        assert_eq!(
            refused(&jwt_raw(r#"{"alg":"ES256"}"#, &dup_exp)),
            wrapped("json: duplicate key 'exp' in object")
        );
        let claims = projected().to_string();
        // In the header, go-jose cannot parse the token at all.
        let dup_header = jwt_raw(r#"{"alg":"ES256","alg":"none"}"#, &claims);
        assert_eq!(refused(&dup_header), INVALID_BEARER_TOKEN);
        let nested = claims.replace(
            r#""namespace":"apps""#,
            r#""namespace":"apps","namespace":"kube-system""#,
        );
        assert_ne!(nested, claims);
        assert_eq!(
            refused(&jwt_raw(r#"{"alg":"ES256"}"#, &nested)),
            wrapped("json: duplicate key 'namespace' in object")
        );
        // go-jose reads `aud` as any JSON value, every object in it.
        let in_aud = with(projected(), "aud", json!(["vault", {}])).to_string();
        let in_aud = in_aud.replace("{}", r#"{"a":1,"a":2}"#);
        assert_eq!(
            refused(&jwt_raw(r#"{"alg":"ES256"}"#, &in_aud)),
            wrapped("json: duplicate key 'a' in object")
        );
        let in_pod = claims.replace(r#""name":"web-0""#, r#""name":"web-0","name":"web-1""#);
        assert_ne!(in_pod, claims);
        assert_eq!(
            refused(&jwt_raw(r#"{"alg":"ES256"}"#, &in_pod)),
            wrapped("json: duplicate key 'name' in object")
        );
        // The registered claims are decoded first, whatever the order of the text.
        let both = claims.replace(r#""sub":"#, r#""sub":"x","sub":"#);
        let both = both.replace(
            r#""namespace":"apps""#,
            r#""uid":"u","uid":"v","namespace":"apps""#,
        );
        assert!(
            both.find("\"uid\":\"u\"") < both.find("\"sub\":\"x\""),
            "{both}"
        );
        assert_eq!(
            refused(&jwt_raw(r#"{"alg":"ES256"}"#, &both)),
            wrapped("json: duplicate key 'sub' in object")
        );
        // What it skips unread, it does not check: an unknown claim, or an unknown
        // field of `kubernetes.io`, or of a bound object, or a legacy token's `kubernetes.io`.
        for unread in [
            json!({"extra": {}}),
            json!({"extra": [{}]}),
            json!({"kubernetes.io": {"namespace": "apps", "extra": {},
                                     "serviceaccount": {"name": "web", "uid": "sa-1", "extra": {}}}}),
        ] {
            let mut c = projected();
            for (k, v) in unread.as_object().unwrap() {
                c[k] = v.clone();
            }
            let text = c.to_string().replace("{}", r#"{"a":1,"a":2}"#);
            assert!(sa(&jwt_raw(r#"{"alg":"ES256"}"#, &text)).is_ok(), "{text}");
        }
        let legacy = json!({
            "iss": LEGACY_ISSUER, "sub": "system:serviceaccount:apps:web",
            "kubernetes.io/serviceaccount/namespace": "apps",
            "kubernetes.io/serviceaccount/secret.name": "web-token-x",
            "kubernetes.io/serviceaccount/service-account.name": "web",
            "kubernetes.io/serviceaccount/service-account.uid": "sa-1",
            "kubernetes.io": {"namespace": "apps"}
        });
        let text = legacy
            .to_string()
            .replace(r#"{"namespace":"apps"}"#, r#"{"a":1,"a":2}"#);
        assert!(sa(&jwt_raw(r#"{"alg":"ES256"}"#, &text)).is_ok(), "{text}");
    }

    /// The API server's answer for a token this refuses: `status.error`.
    fn refused(raw: &str) -> String {
        classify(raw, &issuers()).unwrap_err().status_error()
    }

    #[test]
    fn any_algorithm_is_read_and_left_to_the_keys_but_a_bad_header_is_unreadable() {
        let claims = projected().to_string();
        for alg in ["none", "HS256", "PS256", "es256"] {
            let t = sa(&jwt_raw(&format!(r#"{{"alg":"{alg}"}}"#), &claims)).unwrap();
            assert_eq!(t.header.alg, alg);
        }
        // go-jose reads an empty kid as none.
        let t = sa(&jwt_raw(r#"{"alg":"RS256","kid":""}"#, &claims)).unwrap();
        assert_eq!(t.header.kid, None);
        // No alg, or a null one, is "": no key verifies it.
        for header in [r#"{"kid":"x"}"#, r#"{"alg":null}"#] {
            assert_eq!(sa(&jwt_raw(header, &claims)).unwrap().header.alg, "");
        }
        // go-jose reads `crit` as a list of names, and verifies only with those it
        // implements (`b64`); null or empty is none.
        for crit in ["null", "[]", r#"["b64"]"#] {
            let header = format!(r#"{{"alg":"ES256","crit":{crit}}}"#);
            assert!(sa(&jwt_raw(&header, &claims)).is_ok(), "{crit}");
        }
        let unmarshal = |what: &str, go_type: &str| {
            wrapped(&format!(
                "json: cannot unmarshal {what} into Go value of type {go_type}"
            ))
        };
        for (crit, reason) in [
            (r#"["exp"]"#, wrapped(CRYPTO_FAILURE)),
            (r#"["b64",null]"#, wrapped(CRYPTO_FAILURE)),
            (r#""b64""#, unmarshal("string", "[]string")),
            ("{}", unmarshal("object", "[]string")),
            ("7", unmarshal("number", "[]string")),
            (r#"["b64",true,{}]"#, unmarshal("bool", "string")),
            // Go's decoder stops at a number, past the other wrong types it noted.
            (r#"[true,7]"#, unmarshal("number", "string")),
        ] {
            let header = format!(r#"{{"alg":"ES256","crit":{crit}}}"#);
            assert_eq!(refused(&jwt_raw(&header, &claims)), reason, "{crit}");
        }
        // A header go-jose cannot read is unreadable before `crit` is looked at.
        for header in [
            r#"{"alg":"ES256","kid":7}"#,
            r#"{"alg":7}"#,
            r#"{"alg":7,"crit":"b64"}"#,
        ] {
            assert_eq!(
                refused(&jwt_raw(header, &claims)),
                INVALID_BEARER_TOKEN,
                "{header}"
            );
        }
        let no_signature = format!("{}.{}.!", b64(r#"{"alg":"RS256"}"#), b64(&claims));
        assert_eq!(refused(&no_signature), INVALID_BEARER_TOKEN);
        let crit_no_signature = format!(
            "{}.{}.!",
            b64(r#"{"alg":"RS256","crit":"b64"}"#),
            b64(&claims)
        );
        assert_eq!(refused(&crit_no_signature), INVALID_BEARER_TOKEN);
    }

    #[test]
    fn claims_of_the_wrong_type_are_refused_in_go_joses_words() {
        const DATE: &str = "go-jose/go-jose/jwt: expected number value to unmarshal NumericDate";
        const AUDIENCE: &str =
            "go-jose/go-jose/jwt: expected string or array value to unmarshal to Audience";
        for (key, value, reason) in [
            ("exp", json!("1795863600"), DATE),
            ("nbf", json!(true), DATE),
            ("iat", json!({}), DATE),
            ("aud", json!(7), AUDIENCE),
            ("aud", Value::Null, AUDIENCE),
            ("aud", json!(["vault", 7]), AUDIENCE),
            (
                "sub",
                json!(["x"]),
                "json: cannot unmarshal array into Go value of type string",
            ),
            (
                "jti",
                json!(5),
                "json: cannot unmarshal number into Go value of type string",
            ),
            (
                "kubernetes.io",
                json!("x"),
                "json: cannot unmarshal string into Go value of type serviceaccount.kubernetes",
            ),
        ] {
            let raw = jwt(&with(projected(), key, value));
            assert_eq!(refused(&raw), wrapped(reason), "{key}");
        }
        let mut claims = projected();
        claims["kubernetes.io"]["pod"] = json!(["web-0"]);
        assert_eq!(
            refused(&jwt(&claims)),
            wrapped("json: cannot unmarshal array into Go value of type serviceaccount.ref")
        );
    }

    #[test]
    fn times_beyond_int64_are_the_distant_past_as_go_converts_them() {
        for huge in [
            "9223372036854775808",
            "18446744073709551616",
            "-1e300",
            "1e300",
        ] {
            let raw = jwt_raw(
                r#"{"alg":"ES256"}"#,
                &projected()
                    .to_string()
                    .replace(&format!("{}", NOW + 3600), huge),
            );
            assert_eq!(
                sa(&raw).unwrap().claims.expires_at,
                Some(i64::MIN),
                "{huge}"
            );
        }
        // 2^53 + 1 and the largest int64 are times like any other.
        let t = sa(&jwt(&with(
            projected(),
            "exp",
            json!(9_007_199_254_740_993_u64),
        )))
        .unwrap();
        assert_eq!(t.claims.expires_at, Some(9_007_199_254_740_992));
    }

    #[test]
    fn audience_may_be_a_single_string_and_times_may_be_fractional() {
        let t = sa(&jwt(&with(
            with(projected(), "aud", json!("vault")),
            "exp",
            json!(NOW as f64 + 10.9),
        )))
        .unwrap();
        assert_eq!(t.claims.audiences, aud(&["vault"]));
        assert_eq!(t.claims.expires_at, Some(NOW + 10));
    }

    #[test]
    fn unnamed_objects_fail_their_lookups_after_the_audience_and_times() {
        let checked = |claims: &Value| {
            let t = sa(&jwt(claims)).unwrap();
            check(&t, &aud(&["vault"]), &issuers(), at(NOW)).map_err(|e| e.status_error())
        };
        let mut claims = projected();
        claims.as_object_mut().unwrap().remove("kubernetes.io");
        assert_eq!(
            checked(&claims),
            Err(wrapped("resource name may not be empty"))
        );
        claims["kubernetes.io"] = json!({"namespace": "", "serviceaccount": {"name": "web"}});
        assert_eq!(
            checked(&claims),
            Err(wrapped("the server could not find the requested resource"))
        );
        claims["kubernetes.io"] = json!({"namespace": "apps", "serviceaccount": {"name": "web"},
                                         "pod": {"uid": "p"}});
        assert_eq!(
            checked(&claims),
            Err(wrapped("service account token has been invalidated"))
        );
        // A missing UID is the API server's to compare with the object's.
        claims["kubernetes.io"] = json!({"namespace": "apps", "serviceaccount": {"name": "web"}});
        assert!(checked(&claims).is_ok());
        // The audience is checked first.
        claims.as_object_mut().unwrap().remove("kubernetes.io");
        claims["aud"] = json!(["other"]);
        assert!(checked(&claims).unwrap_err().contains("token audiences"));
    }

    #[test]
    fn a_projected_tokens_subject_is_ignored_a_legacy_tokens_must_name_its_account() {
        let raw = jwt(&with(
            projected(),
            "sub",
            json!("system:serviceaccount:kube-system:admin"),
        ));
        assert_eq!(
            sa(&raw).unwrap().username(),
            "system:serviceaccount:apps:web"
        );
        let legacy = json!({
            "iss": LEGACY_ISSUER, "sub": "system:serviceaccount:kube-system:admin",
            "kubernetes.io/serviceaccount/namespace": "apps",
            "kubernetes.io/serviceaccount/secret.name": "web-token-x",
            "kubernetes.io/serviceaccount/service-account.name": "web",
            "kubernetes.io/serviceaccount/service-account.uid": "sa-1"
        });
        let err = classify(&jwt(&legacy), &issuers()).unwrap_err();
        assert!(matches!(err, Rejection::SubjectMismatch { .. }));
        assert_eq!(err.status_error(), wrapped("sub claim is invalid"));
        let mut missing = legacy.clone();
        missing
            .as_object_mut()
            .unwrap()
            .remove("kubernetes.io/serviceaccount/secret.name");
        assert_eq!(
            refused(&jwt(&missing)),
            wrapped("secretName claim is missing")
        );
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let raw = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            classify(&raw, &issuers()),
            Err(Rejection::TooLarge { .. })
        ));
    }

    #[test]
    fn expiry_allows_exactly_the_api_servers_leeway() {
        let t = sa(&jwt(&projected())).unwrap();
        let exp = NOW + 3600;
        assert!(check(&t, &aud(&["vault"]), &issuers(), at(exp + LEEWAY_SECONDS)).is_ok());
        let err = check(
            &t,
            &aud(&["vault"]),
            &issuers(),
            at(exp + LEEWAY_SECONDS + 1),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Rejection::Expired {
                expires_at: exp,
                now: exp + 61
            }
        );
        let late = check(&t, &aud(&["vault"]), &issuers(), at(exp + 300)).unwrap_err();
        assert_eq!(
            late.to_string(),
            "service account token has expired: it expired at 2026-11-28T11:00:00Z (5m ago)"
        );
    }

    #[test]
    fn not_before_and_issued_at_allow_the_leeway_into_the_future() {
        let future = with(
            with(projected(), "nbf", json!(NOW + 120)),
            "iat",
            json!(NOW - 10),
        );
        let t = sa(&jwt(&future)).unwrap();
        assert!(check(&t, &aud(&["vault"]), &[], at(NOW + 60)).is_ok());
        let err = check(&t, &aud(&["vault"]), &[], at(NOW + 59)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("service account token is not valid yet"),
            "{err}"
        );

        let t = sa(&jwt(&with(projected(), "iat", json!(NOW + 61)))).unwrap();
        let err = check(&t, &aud(&["vault"]), &[], at(NOW)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("service account token is issued in the future"),
            "{err}"
        );
        assert!(check(&t, &aud(&["vault"]), &[], at(NOW + 1)).is_ok());
    }

    #[test]
    fn audiences_must_intersect_in_the_api_servers_wording() {
        let t = sa(&jwt(&with(projected(), "aud", json!(["vault", "api"])))).unwrap();
        assert_eq!(
            check(&t, &aud(&["x", "api"]), &[], at(NOW)).unwrap(),
            aud(&["api"])
        );
        let err = check(&t, &aud(&["y"]), &[], at(NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"token audiences ["vault" "api"] is invalid for the target audiences ["y"]"#
        );
    }

    #[test]
    fn the_audience_is_judged_before_the_times_as_the_api_server_does() {
        let t = sa(&jwt(&projected())).unwrap();
        let err = check(&t, &aud(&["y"]), &[], at(NOW + 86_400)).unwrap_err();
        assert!(matches!(err, Rejection::Audience { .. }), "{err}");
    }

    #[test]
    fn a_token_without_audiences_stands_for_the_api_audiences() {
        let mut claims = projected();
        claims.as_object_mut().unwrap().remove("aud");
        let t = sa(&jwt(&claims)).unwrap();
        assert_eq!(
            check(&t, &issuers(), &issuers(), at(NOW)).unwrap(),
            issuers()
        );
        assert!(matches!(
            check(&t, &aud(&["vault"]), &issuers(), at(NOW)),
            Err(Rejection::Audience { .. })
        ));
    }

    #[test]
    fn time_helpers_never_overflow() {
        assert_eq!(rfc3339(NOW), "2026-11-28T10:00:00Z");
        assert_eq!(rfc3339(-5), "@-5");
        assert_eq!(
            ago(i64::MAX, i64::MIN),
            humantime::format_duration(Duration::from_secs(i64::MAX as u64)).to_string()
        );
        assert_eq!(ago(1, 5), "0s");
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(3)), -3);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn claim_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                (NOW - 7200..NOW + 7200).prop_map(Value::from),
                "[a-z]{0,6}".prop_map(Value::from),
                prop::collection::vec("[a-z]{1,4}", 0..3).prop_map(|v| json!(v)),
            ]
        }

        proptest! {
            #[test]
            fn classify_never_panics_on_arbitrary_text(raw in ".{0,400}") {
                let _ = classify(&raw, &issuers());
            }

            #[test]
            fn classify_never_panics_on_arbitrary_segments(h in prop::collection::vec(any::<u8>(), 0..64),
                                                           p in prop::collection::vec(any::<u8>(), 0..256)) {
                let raw = format!("{}.{}.c2ln", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h),
                                  base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(p));
                let _ = classify(&raw, &issuers());
            }

            #[test]
            fn an_accepted_token_satisfies_every_local_rule(exp in claim_value(), nbf in claim_value(), iat in claim_value(),
                                                            aud_claim in claim_value(), now in NOW - 7200..NOW + 7200,
                                                            requested in prop::collection::vec("[a-z]{1,4}", 1..3)) {
                let claims = with(with(with(with(projected(), "exp", exp), "nbf", nbf), "iat", iat), "aud", aud_claim);
                let Ok(Classified::ServiceAccount(t)) = classify(&jwt(&claims), &issuers()) else { return Ok(()) };
                if let Ok(valid) = check(&t, &requested, &issuers(), at(now)) {
                    let c = &t.claims;
                    prop_assert!(c.expires_at.is_none_or(|e| now <= e + LEEWAY_SECONDS));
                    prop_assert!(c.not_before.is_none_or(|n| now + LEEWAY_SECONDS >= n));
                    prop_assert!(c.issued_at.is_none_or(|i| now + LEEWAY_SECONDS >= i));
                    prop_assert!(!valid.is_empty());
                    let token_auds = if c.audiences.is_empty() { issuers() } else { c.audiences.clone() };
                    prop_assert!(valid.iter().all(|a| requested.contains(a) && token_auds.contains(a)));
                }
            }
        }

        /// Names from a tiny alphabet, so that collisions and boundaries (`""`, `"a:b"`)
        /// come up often.
        fn name() -> impl Strategy<Value = String> {
            "[ab:]{0,3}"
        }

        fn subject() -> impl Strategy<Value = Option<Value>> {
            prop_oneof![
                Just(None),
                Just(Some(Value::Null)),
                name().prop_map(|s| Some(Value::from(s))),
                (name(), name())
                    .prop_map(|(ns, n)| Some(Value::from(service_account_username(&ns, &n)))),
                any::<i64>().prop_map(|i| Some(Value::from(i))),
            ]
        }

        /// One claims object of the shapes a hostile token could take: any claim
        /// missing, null, or of another type.
        fn hostile_claims() -> impl Strategy<Value = Value> {
            let loose = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                name().prop_map(Value::from),
                prop::collection::vec(name(), 0..3).prop_map(|v| json!(v)),
            ];
            prop::collection::btree_map(
                prop_oneof![
                    Just("iss"),
                    Just("sub"),
                    Just("aud"),
                    Just("exp"),
                    Just("nbf"),
                    Just("iat"),
                    Just("jti"),
                    Just("kubernetes.io"),
                ],
                loose.prop_recursive(3, 16, 4, |inner| {
                    prop::collection::btree_map("[a-z.]{1,14}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect()))
                }),
                0..8,
            )
            .prop_map(|m| {
                let mut o: serde_json::Map<String, Value> =
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                o.insert("iss".into(), Value::from(ISS));
                Value::Object(o)
            })
        }

        proptest! {
            #[test]
            fn an_accepted_token_names_the_service_account_of_its_claims_whatever_its_subject(
                sub in subject(), ns in name(), sa in name(), pod in prop::option::of(name())
            ) {
                let mut claims = projected();
                claims["kubernetes.io"] = json!({"namespace": ns, "serviceaccount": {"name": sa, "uid": "u"}});
                if let Some(pod) = pod {
                    claims["kubernetes.io"]["pod"] = json!({"name": pod, "uid": "p"});
                }
                match sub {
                    None => { claims.as_object_mut().unwrap().remove("sub"); }
                    Some(v) => claims["sub"] = v,
                }
                if let Ok(Classified::ServiceAccount(t)) = classify(&jwt(&claims), &issuers())
                    && check(&t, &aud(&["vault"]), &issuers(), at(NOW)).is_ok()
                {
                    let c = &t.claims;
                    prop_assert!(!c.namespace.is_empty() && !c.service_account.name.is_empty());
                    prop_assert_eq!(&c.namespace, &ns);
                    prop_assert_eq!(&c.service_account.name, &sa);
                    prop_assert_eq!(t.username(), service_account_username(&ns, &sa));
                }
            }

            #[test]
            fn classify_and_check_never_panic_on_hostile_claims(claims in hostile_claims(),
                                                                now in any::<i64>(),
                                                                requested in prop::collection::vec(name(), 0..3)) {
                if let Ok(Classified::ServiceAccount(t)) = classify(&jwt(&claims), &issuers()) {
                    let now = if now >= 0 {
                        UNIX_EPOCH.checked_add(Duration::from_secs(now.unsigned_abs()))
                    } else {
                        UNIX_EPOCH.checked_sub(Duration::from_secs(now.unsigned_abs()))
                    };
                    if let Some(now) = now {
                        let _ = check(&t, &requested, &issuers(), now);
                    }
                }
            }

            #[test]
            fn every_time_rejection_can_be_written(t in any::<i64>(), now in any::<i64>()) {
                for r in [
                    Rejection::Expired { expires_at: t, now },
                    Rejection::NotYetValid { not_before: t, now },
                    Rejection::IssuedInTheFuture { issued_at: t, now },
                ] {
                    prop_assert!(!r.to_string().is_empty());
                }
                prop_assert!(!rfc3339(t).is_empty());
                prop_assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
                prop_assert_eq!(rfc3339(253_402_300_800), "@253402300800");
            }
        }
    }
}
