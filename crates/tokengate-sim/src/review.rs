//! The API server's service-account token authenticator, as the sim runs it for
//! TokenReviews and for its own callers' bearer tokens.
//!
//! Responsible for: the API server's order of checks and its `status.error` wording:
//! a token of another issuer or not a JWT → `invalid bearer token`; then the signature
//! (by `kid`), the audience intersection (a legacy token stands for the API audiences),
//! and only then the validator: `exp`/`nbf`/`iat` with the 60 s leeway (projected
//! tokens), the service account's existence and UID, the bound pod's existence and UID,
//! a legacy token's Secret and its stored copy. Builds `status.user` exactly as the API
//! server does.
//!
//! Reading the token is `jwt`'s. All of it is written from the API server's source rather
//! than shared with the gate's checks, so that the sim is an independent oracle for them.
//! Pure: the store, keys and `now` are passed in.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};

use super::jwt::{self, Kind, Token, Unread};
use super::keys::Keyring;
use super::store::Store;
use super::tokens;

/// The error the API server reports for a bearer token no authenticator recognised.
pub(crate) const INVALID_BEARER_TOKEN: &str = "invalid bearer token";
/// go-jose's default clock-skew leeway, which the API server uses.
const LEEWAY_SECONDS: i64 = 60;

/// Extra keys the API server puts in a service account's `UserInfo`.
pub(crate) const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// See [`EXTRA_POD_NAME`].
pub(crate) const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// See [`EXTRA_POD_NAME`].
pub(crate) const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// The authority's fixed configuration.
pub(crate) struct Authority<'a> {
    /// The projected tokens' issuer (`--service-account-issuer`).
    pub(crate) issuer: &'a str,
    /// `--api-audiences`: what a review with no `spec.audiences` asks for, and what a
    /// token without `aud` (legacy) is taken to be for.
    pub(crate) api_audiences: &'a [String],
    /// The signing keys.
    pub(crate) keys: &'a Keyring,
}

/// A token whose signature, issuer and audiences passed: the validator comes next.
pub(crate) struct Verified {
    token: Token,
    raw: String,
    audiences: Vec<String>,
}

/// An authenticated service account.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Authenticated {
    /// The user, as `status.user` carries it.
    pub(crate) user: UserInfo,
    /// The audiences the token is valid for among the requested ones.
    pub(crate) audiences: Vec<String>,
}

impl Authenticated {
    /// `status.user.username`.
    pub(crate) fn username(&self) -> &str {
        self.user.username.as_deref().unwrap_or_default()
    }
}

impl Authority<'_> {
    /// The authenticator's part before any lookup: recognise, verify the signature,
    /// intersect the audiences. `requested` empty means the API audiences.
    pub(crate) fn verify(&self, raw: &str, requested: &[String]) -> Result<Verified, String> {
        // A token no service-account authenticator reads goes to the API server's other
        // authenticators; when none knows it, the bearer-token wrapper says only this.
        let token = jwt::read(raw, self.issuer).map_err(|unread| match unread {
            Unread::NotOurs => INVALID_BEARER_TOKEN.to_owned(),
            Unread::Refused(reason) => reason,
        })?;
        self.keys
            .verify(raw, &token.alg, token.kid.as_deref())
            .map_err(|e| e.to_string())?;

        let requested = if requested.is_empty() {
            self.api_audiences
        } else {
            requested
        };
        let token_audiences = if token.audiences.is_empty() {
            self.api_audiences
        } else {
            &token.audiences
        };
        // `Audiences.Intersect`: the token's audiences that were requested, in its order.
        let audiences: Vec<String> = token_audiences
            .iter()
            .filter(|audience| requested.contains(audience))
            .cloned()
            .collect();
        if audiences.is_empty() {
            return Err(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_quote(token_audiences),
                go_quote(requested)
            ));
        }
        Ok(Verified {
            token,
            raw: raw.to_owned(),
            audiences,
        })
    }
}

impl Verified {
    /// The validator: times (projected), then the objects the token names, at `now`
    /// (Unix seconds) against `store`.
    pub(crate) fn validate(self, store: &Store, now: i64) -> Result<Authenticated, String> {
        let token = &self.token;
        let ns = token.namespace.as_str();
        let sa_ref = &token.service_account;
        let mut extra = BTreeMap::new();
        match &token.kind {
            Kind::Projected { pod, secret } => {
                // go-jose's Claims.Validate: nbf, exp, iat, each with the leeway.
                if token
                    .not_before
                    .is_some_and(|nbf| now + LEEWAY_SECONDS < nbf)
                {
                    return Err("service account token is not valid yet".into());
                }
                if token
                    .expires_at
                    .is_some_and(|exp| now - LEEWAY_SECONDS > exp)
                {
                    return Err("service account token has expired".into());
                }
                if token
                    .issued_at
                    .is_some_and(|iat| now + LEEWAY_SECONDS < iat)
                {
                    return Err("service account token is issued in the future".into());
                }
                let sa = store
                    .get::<ServiceAccount>(ns, &sa_ref.name)
                    .map_err(|e| e.to_string())?;
                let uid = sa.metadata.uid.as_deref().unwrap_or_default();
                if uid != sa_ref.uid {
                    return Err(format!(
                        "service account UID ({uid}) does not match claim ({})",
                        sa_ref.uid
                    ));
                }
                if let Some(secret_ref) = secret {
                    let secret = store
                        .get::<Secret>(ns, &secret_ref.name)
                        .map_err(|_| "service account token has been invalidated".to_owned())?;
                    let uid = secret.metadata.uid.as_deref().unwrap_or_default();
                    if uid != secret_ref.uid {
                        return Err(format!(
                            "secret UID ({uid}) does not match service account secret ref claim ({})",
                            secret_ref.uid
                        ));
                    }
                }
                if let Some(pod_ref) = pod {
                    let pod = store
                        .get::<Pod>(ns, &pod_ref.name)
                        .map_err(|_| "service account token has been invalidated".to_owned())?;
                    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                    if uid != pod_ref.uid {
                        return Err(format!(
                            "pod UID ({uid}) does not match service account pod ref claim ({})",
                            pod_ref.uid
                        ));
                    }
                    extra.insert(EXTRA_POD_NAME.to_owned(), vec![pod_ref.name.clone()]);
                    extra.insert(EXTRA_POD_UID.to_owned(), vec![pod_ref.uid.clone()]);
                }
                if !token.jti.is_empty() {
                    let credential_id = format!("JTI={}", token.jti);
                    extra.insert(EXTRA_CREDENTIAL_ID.to_owned(), vec![credential_id]);
                }
            }
            Kind::Legacy {
                secret: secret_name,
            } => {
                // The legacy validator: the Secret must exist and hold this very token,
                // then the service account must exist with the claimed UID. No times.
                let secret = store
                    .get::<Secret>(ns, secret_name)
                    .map_err(|_| "Token has been invalidated".to_owned())?;
                let stored = secret.data.as_ref().and_then(|d| d.get("token"));
                if stored.is_none_or(|t| t.0 != self.raw.as_bytes()) {
                    return Err("Token does not match server's copy".into());
                }
                let sa = store
                    .get::<ServiceAccount>(ns, &sa_ref.name)
                    .map_err(|e| e.to_string())?;
                let uid = sa.metadata.uid.as_deref().unwrap_or_default();
                if uid != sa_ref.uid {
                    return Err(format!(
                        "ServiceAccount UID ({uid}) does not match claim ({})",
                        sa_ref.uid
                    ));
                }
            }
        }
        Ok(Authenticated {
            user: UserInfo {
                username: Some(tokens::username(ns, &sa_ref.name)),
                uid: Some(sa_ref.uid.clone()),
                // The SA authenticator's groups, then the one the authenticated-group
                // adder appends to every authenticated user.
                groups: Some(vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".to_owned(),
                ]),
                extra: (!extra.is_empty()).then_some(extra),
            },
            audiences: self.audiences,
        })
    }
}

/// `status` of a TokenReview with this outcome, shaped as the API server serializes it:
/// on failure `authenticated` is omitted (Go's `omitempty` on `false`), `user` is `{}`,
/// `error` is set and `audiences` absent; on success `error` is absent.
pub(crate) fn review_status(outcome: Result<Authenticated, String>) -> TokenReviewStatus {
    match outcome {
        Ok(ok) => TokenReviewStatus {
            authenticated: Some(true),
            user: Some(ok.user),
            audiences: Some(ok.audiences),
            error: None,
        },
        // The API server's union of authenticators wraps a service-account refusal in
        // the bearer-token authenticator's own words.
        Err(error) => TokenReviewStatus {
            authenticated: None,
            user: Some(UserInfo::default()),
            audiences: None,
            error: Some(if error == INVALID_BEARER_TOKEN {
                error
            } else {
                format!("[{INVALID_BEARER_TOKEN}, {error}]")
            }),
        },
    }
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub(crate) fn go_quote(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| go_quote_one(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%q` of a string (`strconv.Quote`) for the characters tokens carry: printable
/// characters as themselves, `"` and `\` escaped, control characters as `\n`, `\t`,
/// `\xNN` or `\uNNNN`.
fn go_quote_one(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{self, Projected, Ref};
    use std::time::SystemTime;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        keys: Keyring,
        store: Store,
        api: Vec<String>,
        sa_uid: String,
        pod_uid: String,
    }

    fn fixture() -> Fixture {
        let mut store = Store::default();
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("app".into());
        let sa = store.create("ns", sa, SystemTime::now()).expect("sa");
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        let pod = store.create("ns", pod, SystemTime::now()).expect("pod");
        Fixture {
            keys: Keyring::generate().expect("keys"),
            store,
            api: vec![ISSUER.to_owned()],
            sa_uid: sa.metadata.uid.expect("uid"),
            pod_uid: pod.metadata.uid.expect("uid"),
        }
    }

    impl Fixture {
        fn authority(&self) -> Authority<'_> {
            Authority {
                issuer: ISSUER,
                api_audiences: &self.api,
                keys: &self.keys,
            }
        }

        fn projected(&self, audiences: &[&str], pod: bool) -> Projected {
            Projected {
                issuer: ISSUER.into(),
                namespace: "ns".into(),
                service_account: Ref {
                    name: "app".into(),
                    uid: self.sa_uid.clone(),
                },
                pod: pod.then(|| Ref {
                    name: "web".into(),
                    uid: self.pod_uid.clone(),
                }),
                audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
                issued_at: NOW - 10,
                expires_at: NOW + 3600,
                jti: "the-jti".into(),
            }
        }

        fn review(&self, raw: &str, requested: &[&str]) -> Result<Authenticated, String> {
            let requested: Vec<String> = requested.iter().map(|s| (*s).to_owned()).collect();
            self.authority()
                .verify(raw, &requested)?
                .validate(&self.store, NOW)
        }
    }

    #[test]
    fn a_pod_bound_token_authenticates_with_the_api_server_user() {
        let f = fixture();
        let raw = f
            .keys
            .sign(&f.projected(&["vault", "other"], true).claims());
        let ok = f.review(&raw, &["vault"]).expect("authenticated");
        assert_eq!(ok.audiences, vec!["vault".to_owned()]);
        assert_eq!(
            ok.user.username.as_deref(),
            Some("system:serviceaccount:ns:app")
        );
        assert_eq!(ok.user.uid.as_deref(), Some(f.sa_uid.as_str()));
        assert_eq!(
            ok.user.groups,
            Some(vec![
                "system:serviceaccounts".to_owned(),
                "system:serviceaccounts:ns".to_owned(),
                "system:authenticated".to_owned(),
            ])
        );
        let extra = ok.user.extra.expect("extra");
        assert_eq!(extra[EXTRA_POD_NAME], vec!["web".to_owned()]);
        assert_eq!(extra[EXTRA_POD_UID], vec![f.pod_uid.clone()]);
        assert_eq!(extra[EXTRA_CREDENTIAL_ID], vec!["JTI=the-jti".to_owned()]);
    }

    #[test]
    fn empty_requested_audiences_mean_the_api_audiences() {
        let f = fixture();
        let raw = f.keys.sign(&f.projected(&[ISSUER], false).claims());
        let ok = f.review(&raw, &[]).expect("authenticated");
        assert_eq!(ok.audiences, vec![ISSUER.to_owned()]);
        assert_eq!(
            ok.user.extra.map(|e| e.len()),
            Some(1),
            "only the credential id"
        );
    }

    #[test]
    fn audience_mismatch_uses_go_quoting() {
        let f = fixture();
        let raw = f.keys.sign(&f.projected(&["x"], false).claims());
        assert_eq!(
            f.review(&raw, &["y"]),
            Err(r#"token audiences ["x"] is invalid for the target audiences ["y"]"#.into())
        );
    }

    #[test]
    fn audience_is_checked_before_expiry_as_the_api_server_does() {
        let f = fixture();
        let mut claims = f.projected(&["x"], false);
        claims.expires_at = NOW - 3600;
        let raw = f.keys.sign(&claims.claims());
        assert!(
            f.review(&raw, &["y"])
                .expect_err("rejected")
                .starts_with("token audiences")
        );
        assert_eq!(
            f.review(&raw, &["x"]),
            Err("service account token has expired".into())
        );
    }

    #[test]
    fn the_leeway_is_sixty_seconds() {
        let f = fixture();
        let mut claims = f.projected(&["x"], false);
        claims.expires_at = NOW - 60;
        let raw = f.keys.sign(&claims.claims());
        assert!(f.review(&raw, &["x"]).is_ok());
        claims.expires_at = NOW - 61;
        let raw = f.keys.sign(&claims.claims());
        assert!(f.review(&raw, &["x"]).is_err());

        let mut claims = f.projected(&["x"], false);
        claims.issued_at = NOW + 61;
        let raw = f.keys.sign(&claims.claims());
        assert_eq!(
            f.review(&raw, &["x"]),
            Err("service account token is not valid yet".into())
        );
    }

    #[test]
    fn deleted_or_recreated_objects_invalidate_the_token() {
        let mut f = fixture();
        let raw = f.keys.sign(&f.projected(&["x"], true).claims());
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        f.store.delete::<Pod>("ns", "web").expect("delete");
        assert_eq!(
            f.review(&raw, &["x"]),
            Err("service account token has been invalidated".into())
        );
        let new_pod = f.store.create("ns", pod, SystemTime::now()).expect("pod");
        assert_eq!(
            f.review(&raw, &["x"]),
            Err(format!(
                "pod UID ({}) does not match service account pod ref claim ({})",
                new_pod.metadata.uid.expect("uid"),
                f.pod_uid
            ))
        );
        f.store.delete_service_account("ns", "app").expect("delete");
        assert_eq!(
            f.review(&raw, &["x"]),
            Err(r#"serviceaccounts "app" not found"#.into())
        );
    }

    #[test]
    fn foreign_and_forged_tokens_are_rejected_in_the_api_server_words() {
        let f = fixture();
        assert_eq!(f.review("not-a-jwt", &[]), Err(INVALID_BEARER_TOKEN.into()));
        let mut other = f.projected(&["x"], false);
        other.issuer = "https://elsewhere".into();
        assert_eq!(
            f.review(&f.keys.sign(&other.claims()), &["x"]),
            Err(INVALID_BEARER_TOKEN.into())
        );
        let forged = Keyring::generate().expect("keys");
        let raw = forged.sign(&f.projected(&["x"], false).claims());
        assert_eq!(
            f.review(&raw, &["x"]),
            Err("invalid signature, no keys found".into())
        );
        let kid = f.keys.current_kid();
        let header = serde_json::json!({"alg": "ES256", "kid": kid});
        let raw = forged.sign_raw(&header, &f.projected(&["x"], false).claims());
        assert_eq!(
            f.review(&raw, &["x"]),
            Err("square/go-jose: error in cryptographic primitive".into())
        );
    }

    #[test]
    fn legacy_tokens_live_while_their_secret_holds_them() {
        let mut f = fixture();
        let sa = Ref {
            name: "app".into(),
            uid: f.sa_uid.clone(),
        };
        let raw = f
            .keys
            .sign(&tokens::legacy_claims("ns", &sa, "app-token-abcde"));
        assert_eq!(
            f.review(&raw, &[]),
            Err("Token has been invalidated".into())
        );
        let mut secret = Secret::default();
        secret.metadata.name = Some("app-token-abcde".into());
        secret.data = Some(
            [(
                "token".to_owned(),
                k8s_openapi::ByteString(raw.clone().into_bytes()),
            )]
            .into(),
        );
        f.store
            .create("ns", secret, SystemTime::now())
            .expect("secret");
        let ok = f.review(&raw, &[]).expect("authenticated");
        assert_eq!(ok.audiences, f.api);
        assert_eq!(ok.user.extra, None, "no pod, no credential id");
        assert_eq!(
            f.review(&raw, &["vault"]),
            Err(format!(
                "token audiences {} is invalid for the target audiences [\"vault\"]",
                go_quote(&f.api)
            ))
        );
    }

    #[test]
    fn failed_status_is_shaped_like_the_api_server_one() {
        let status = review_status(Err("invalid bearer token".into()));
        assert_eq!(
            serde_json::to_value(&status).expect("json"),
            serde_json::json!({"user": {}, "error": "invalid bearer token"})
        );
    }

    #[test]
    fn go_quote_escapes_like_strconv_quote() {
        assert_eq!(go_quote(&["a".into(), "b\"c".into()]), r#"["a" "b\"c"]"#);
        assert_eq!(go_quote(&[]), "[]");
        assert_eq!(go_quote(&["\u{1}".into()]), r#"["\x01"]"#);
    }
}
