//! What the sim's tokens say: the claim layouts of projected (TokenRequest) and legacy
//! (Secret) service-account tokens, and the TokenRequest API's validation.
//!
//! Responsible for: building claims exactly as the API server does (key names, nesting,
//! which claims are present), and turning a TokenRequest into claims or a refusal in the
//! API server's words. Keys serialize in sorted order, as go-jose writes them.
//!
//! Not responsible for: signing (see `keys`), storage (see `store`), HTTP (see `api`).
//! Time is passed in.

use serde_json::{Value, json};

/// The issuer of legacy (Secret-based) service-account tokens.
pub(crate) const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// The TokenRequest default lifetime (`spec.expirationSeconds`), one hour.
pub(crate) const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime the TokenRequest API accepts, ten minutes.
pub(crate) const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime the TokenRequest API accepts, 2^32 seconds.
pub(crate) const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// The API server's username for a service account.
pub(crate) fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A (name, uid) reference, as the claims carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ref {
    /// Object name.
    pub(crate) name: String,
    /// Object uid.
    pub(crate) uid: String,
}

/// Everything a projected token states.
#[derive(Debug, Clone)]
pub(crate) struct Projected {
    /// `iss`.
    pub(crate) issuer: String,
    /// The service account's namespace.
    pub(crate) namespace: String,
    /// The service account.
    pub(crate) service_account: Ref,
    /// The pod the token is bound to, if any.
    pub(crate) pod: Option<Ref>,
    /// `aud`.
    pub(crate) audiences: Vec<String>,
    /// `iat` and `nbf`, in seconds since the epoch.
    pub(crate) issued_at: i64,
    /// `exp`, in seconds since the epoch.
    pub(crate) expires_at: i64,
    /// `jti`.
    pub(crate) jti: String,
}

impl Projected {
    /// The claims as the API server writes them.
    pub(crate) fn claims(&self) -> Value {
        let mut kubernetes = json!({
            "namespace": self.namespace,
            "serviceaccount": {"name": self.service_account.name, "uid": self.service_account.uid},
        });
        if let (Some(pod), Some(obj)) = (&self.pod, kubernetes.as_object_mut()) {
            obj.insert("pod".into(), json!({"name": pod.name, "uid": pod.uid}));
        }
        json!({
            "aud": self.audiences,
            "exp": self.expires_at,
            "iat": self.issued_at,
            "iss": self.issuer,
            "jti": self.jti,
            "kubernetes.io": kubernetes,
            "nbf": self.issued_at,
            "sub": username(&self.namespace, &self.service_account.name),
        })
    }
}

/// The claims of a legacy token stored in Secret `secret` of service account `sa`.
pub(crate) fn legacy_claims(namespace: &str, sa: &Ref, secret: &str) -> Value {
    json!({
        "iss": LEGACY_ISSUER,
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": sa.name,
        "kubernetes.io/serviceaccount/service-account.uid": sa.uid,
        "sub": username(namespace, &sa.name),
    })
}

/// Checks `spec.expirationSeconds` as the API server's validation does; the message is
/// the field error's (`spec.expirationSeconds: Invalid value: …`).
pub(crate) fn validate_expiration(seconds: i64) -> Result<(), String> {
    let detail = if seconds < MIN_EXPIRATION_SECONDS {
        "may not specify a duration less than 10 minutes"
    } else if seconds > MAX_EXPIRATION_SECONDS {
        "may not specify a duration larger than 2^32 seconds"
    } else {
        return Ok(());
    };
    Err(format!("Invalid value: {seconds}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> Ref {
        Ref {
            name: "app".into(),
            uid: "sa-uid".into(),
        }
    }

    #[test]
    fn projected_claims_have_the_api_server_layout_in_sorted_order() {
        let token = Projected {
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            namespace: "ns".into(),
            service_account: sa(),
            pod: Some(Ref {
                name: "web".into(),
                uid: "pod-uid".into(),
            }),
            audiences: vec!["vault".into()],
            issued_at: 1000,
            expires_at: 4600,
            jti: "j".into(),
        };
        assert_eq!(
            token.claims().to_string(),
            concat!(
                r#"{"aud":["vault"],"exp":4600,"iat":1000,"iss":"https://kubernetes.default.svc.cluster.local","#,
                r#""jti":"j","kubernetes.io":{"namespace":"ns","pod":{"name":"web","uid":"pod-uid"},"#,
                r#""serviceaccount":{"name":"app","uid":"sa-uid"}},"nbf":1000,"sub":"system:serviceaccount:ns:app"}"#
            )
        );
    }

    #[test]
    fn unbound_tokens_carry_no_pod_claim() {
        let token = Projected {
            issuer: "i".into(),
            namespace: "ns".into(),
            service_account: sa(),
            pod: None,
            audiences: vec!["a".into(), "b".into()],
            issued_at: 1,
            expires_at: 2,
            jti: "j".into(),
        };
        let claims = token.claims();
        assert!(claims["kubernetes.io"].get("pod").is_none());
        assert_eq!(claims["aud"], json!(["a", "b"]));
    }

    #[test]
    fn legacy_claims_have_no_exp_and_no_aud() {
        let claims = legacy_claims("ns", &sa(), "app-token-abcde");
        assert_eq!(
            claims.to_string(),
            concat!(
                r#"{"iss":"kubernetes/serviceaccount","kubernetes.io/serviceaccount/namespace":"ns","#,
                r#""kubernetes.io/serviceaccount/secret.name":"app-token-abcde","#,
                r#""kubernetes.io/serviceaccount/service-account.name":"app","#,
                r#""kubernetes.io/serviceaccount/service-account.uid":"sa-uid","sub":"system:serviceaccount:ns:app"}"#
            )
        );
    }

    #[test]
    fn expiration_bounds_match_the_token_request_validation() {
        assert_eq!(
            validate_expiration(599),
            Err("Invalid value: 599: may not specify a duration less than 10 minutes".into())
        );
        assert_eq!(validate_expiration(600), Ok(()));
        assert_eq!(validate_expiration(1 << 32), Ok(()));
        assert!(validate_expiration((1 << 32) + 1).is_err());
    }
}
