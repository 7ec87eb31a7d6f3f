//! The ingress auth hook: `/auth` for nginx `auth_request`, Traefik ForwardAuth and
//! Envoy's HTTP ext_authz.
//!
//! Responsible for: taking the workload's token from `Authorization: Bearer`, the
//! audiences from `?audience=` (repeatable; else `policy.audiences`), running the same
//! review pipeline as the TokenReview endpoints, and answering in the shape these proxies
//! understand: exactly `200` with the identity in the Kubernetes authenticating-proxy
//! headers (`X-Remote-User`, `X-Remote-Uid`, one `X-Remote-Group` per group,
//! `X-Remote-Extra-<key>` per extra value), `401` with an RFC 6750 `WWW-Authenticate`
//! challenge, `403` for a valid token outside the `[auth]` allow-list, `503` when the
//! answer cannot be known now. Never a 5xx for a definitive deny.
//!
//! Not responsible for: the decision itself (see `review`).

use std::sync::{Arc, LazyLock};

use crate::verdict::User;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::bearer::bearer;
use super::error::ApiError;
use super::tokenreview::record_decision;
use crate::config::AuthPolicy;
use crate::metrics::{Endpoint, Outcome};

/// `GET|POST|… /auth[/anything]?audience=A&audience=B`.
pub(super) async fn auth(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (response, outcome) = answer(&state, &headers, &uri).await;
    state.reviewer.metrics().request(Endpoint::Auth, outcome);
    response
}

async fn answer(state: &AppState, headers: &HeaderMap, uri: &Uri) -> (Response, Outcome) {
    // A backend behind the proxy may read another of several headers than the one
    // checked here: refuse the request rather than guess which.
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        let response = (
            StatusCode::BAD_REQUEST,
            "more than one Authorization header: send exactly one\n",
        );
        return (response.into_response(), Outcome::Rejected);
    }
    let Some(token) = bearer(headers) else {
        return (challenge(None), Outcome::Rejected);
    };
    let requested: Vec<String> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(k, v)| k == "audience" && !v.is_empty())
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default();
    let settings = state.reviewer.settings();
    let requested = if requested.is_empty() {
        &settings.policy.audiences
    } else {
        &requested
    };
    let decision = match state
        .reviewer
        .review(token, requested, state.reviewer.now())
        .await
    {
        Ok(d) => d,
        Err(e) => return (ApiError::from(e).into_text_response(), Outcome::Error),
    };
    record_decision(&decision);
    let verdict = &decision.verdict;
    if !verdict.authenticated {
        return (challenge(Some(&verdict.error)), Outcome::Rejected);
    }
    let Some(user) = verdict.user.as_ref() else {
        return (
            challenge(Some("the API server named no user")),
            Outcome::Rejected,
        );
    };
    if let Err(why) = state.auth().allows(user) {
        let response = (StatusCode::FORBIDDEN, format!("{why}\n"));
        return (response.into_response(), Outcome::Rejected);
    }
    // The headers go straight into the response's own map: built apart and merged, each
    // would be hashed twice.
    let mut response = (StatusCode::OK, "ok\n").into_response();
    match add_identity_headers(user, response.headers_mut()) {
        Some(()) => (response, Outcome::Authenticated),
        None => (
            (
                StatusCode::FORBIDDEN,
                "the token's identity cannot be carried in HTTP headers\n",
            )
                .into_response(),
            Outcome::Rejected,
        ),
    }
}

/// A `401` with the RFC 6750 challenge: no `error` attribute when no token was sent.
fn challenge(error: Option<&str>) -> Response {
    let value = match error {
        None => r#"Bearer realm="tokengate""#.to_string(),
        Some(e) => format!(
            r#"Bearer realm="tokengate", error="invalid_token", error_description="{}""#,
            description(e)
        ),
    };
    let value = HeaderValue::from_str(&value).expect("the description is sanitised");
    let body = match error {
        None => "no bearer token\n".to_string(),
        Some(e) => format!("invalid token: {e}\n"),
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, value)],
        body,
    )
        .into_response()
}

/// RFC 6750 §3: `error_description` holds only %x20-21 / %x23-5B / %x5D-7E, so quotes
/// become apostrophes, backslashes slashes, anything else a space.
fn description(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => ' ',
        })
        .collect()
}

/// Adds the authenticating-proxy headers for `user` to `headers`; `None` if a value
/// cannot be a header (then some may have been added).
pub(crate) fn add_identity_headers(user: &User, headers: &mut HeaderMap) -> Option<()> {
    headers.reserve(2 + user.groups().len() + 4);
    let value = |s: &str| HeaderValue::from_bytes(s.as_bytes()).ok();
    if user.username().is_empty() {
        return None;
    }
    headers.insert("x-remote-user", value(user.username())?);
    if !user.uid().is_empty() {
        headers.insert("x-remote-uid", value(user.uid())?);
    }
    for group in user.groups() {
        headers.append("x-remote-group", value(group)?);
    }
    for (key, values) in user.extra().iter() {
        let name = match KNOWN_EXTRA_HEADERS.iter().find(|(k, _)| *k == key) {
            Some((_, name)) => name.clone(),
            None => extra_header(key)?,
        };
        for v in values {
            headers.append(name.clone(), value(v)?);
        }
    }
    Some(())
}

/// The header name that carries the values of extra `key`.
fn extra_header(key: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(format!("x-remote-extra-{}", escape_key(key)).as_bytes()).ok()
}

/// The header names of the extra keys the API server sets, made once.
static KNOWN_EXTRA_HEADERS: LazyLock<Vec<(&str, HeaderName)>> = LazyLock::new(|| {
    crate::verdict::KNOWN_KEYS
        .iter()
        .map(|k| {
            (
                *k,
                extra_header(k).expect("a well-known key makes a header name"),
            )
        })
        .collect()
});

/// Percent-encodes an extra key for a header name. Kubernetes reads the name back with
/// `url.PathUnescape` (and lower-cases it), so every byte but the unreserved ones is
/// encoded: that also keeps the name within HTTP's token characters.
fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b).to_ascii_lowercase());
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl AuthPolicy {
    /// Whether `/auth` lets this user through: with no list configured, any authenticated
    /// token; otherwise a listed user, a member of a listed group, or a service account of
    /// a listed namespace.
    pub(crate) fn allows(&self, user: &User) -> Result<(), String> {
        if self.users.is_empty() && self.groups.is_empty() && self.namespaces.is_empty() {
            return Ok(());
        }
        let username = user.username();
        let namespace = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, _)| ns);
        let allowed = self.users.contains(username)
            || user.groups().any(|g| self.groups.contains(g))
            || namespace.is_some_and(|ns| self.namespaces.contains(ns));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{username} is authenticated but not allowed here (auth.users, auth.groups, auth.namespaces)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn user() -> User {
        User::from(k8s_openapi::api::authentication::v1::UserInfo {
            username: Some("system:serviceaccount:apps:web".into()),
            uid: Some("sa-1".into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:apps".into(),
            ]),
            extra: Some(BTreeMap::from([
                (
                    "authentication.kubernetes.io/pod-name".to_string(),
                    vec!["web-0".to_string()],
                ),
                (
                    "authentication.kubernetes.io/credential-id".to_string(),
                    vec!["JTI=1".to_string()],
                ),
            ])),
        })
    }

    #[test]
    fn identity_goes_into_the_authenticating_proxy_headers() {
        let mut h = HeaderMap::new();
        add_identity_headers(&user(), &mut h).unwrap();
        assert_eq!(h["x-remote-user"], "system:serviceaccount:apps:web");
        assert_eq!(h["x-remote-uid"], "sa-1");
        let groups: Vec<_> = h.get_all("x-remote-group").iter().collect();
        assert_eq!(
            groups,
            ["system:serviceaccounts", "system:serviceaccounts:apps"]
        );
        assert_eq!(
            h["x-remote-extra-authentication.kubernetes.io%2Fpod-name"],
            "web-0"
        );
        assert_eq!(
            h["x-remote-extra-authentication.kubernetes.io%2Fcredential-id"],
            "JTI=1"
        );
    }

    #[test]
    fn extra_keys_are_escaped_so_kubernetes_unescapes_them_back() {
        assert_eq!(
            escape_key("example.org/Key:with spaces"),
            "example.org%2Fkey%3Awith%20spaces"
        );
    }

    #[test]
    fn the_challenge_description_holds_only_rfc_6750_characters() {
        let d = description(r#"token audiences ["x"] is invalid \ é"#);
        assert_eq!(d, "token audiences ['x'] is invalid /  ");
        let r = challenge(Some(r#"a "quoted" reason"#));
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="tokengate", error="invalid_token", error_description="a 'quoted' reason""#
        );
        assert_eq!(
            challenge(None).headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="tokengate""#
        );
    }

    #[test]
    fn the_allow_list_admits_users_groups_and_namespaces() {
        let open = AuthPolicy::default();
        assert!(open.allows(&user()).is_ok());
        let by_ns = AuthPolicy {
            namespaces: ["apps".to_string()].into(),
            ..AuthPolicy::default()
        };
        assert!(by_ns.allows(&user()).is_ok());
        let by_group = AuthPolicy {
            groups: ["system:serviceaccounts:apps".to_string()].into(),
            ..AuthPolicy::default()
        };
        assert!(by_group.allows(&user()).is_ok());
        let other = AuthPolicy {
            namespaces: ["payments".to_string()].into(),
            ..AuthPolicy::default()
        };
        assert!(
            other
                .allows(&user())
                .unwrap_err()
                .contains("not allowed here")
        );
    }
}
