//! The TokenReview wire format, as the API server reads and writes it.
//!
//! Responsible for: reading a TokenReview request's `spec` as k8s-openapi and Go's
//! `encoding/json` read it (an object, unknown fields ignored, the last of duplicate
//! fields winning; Go's case-insensitive key matching is not followed), with the token
//! borrowed from the body; and writing the answer in
//! k8s-openapi's field order from borrowed parts: the request's spec (a token that had
//! no escape in the request copied as it came, with no check) and the shared verdict.
//!
//! Not responsible for: HTTP (see `http`), or deciding anything.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::verdict::{Verdict, needs_escape};

/// A TokenReview as callers send it: either API version, `kind` checked by hand. The
/// token is borrowed from the body (unless it has JSON escapes), not copied.
pub struct ReviewRequest<'a> {
    /// `apiVersion`, when given.
    pub(crate) api_version: Option<Cow<'a, str>>,
    /// `kind`, when given.
    pub(crate) kind: Option<Cow<'a, str>>,
    /// `spec`.
    pub spec: ReviewSpec<'a>,
}

/// Read as serde's derive read it, but for an array, which it took for an object (the
/// API server does not): an object only, unknown fields ignored, a duplicate refused.
impl<'de: 'a, 'a> Deserialize<'de> for ReviewRequest<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Review;
        impl<'de> serde::de::Visitor<'de> for Review {
            type Value = ReviewRequest<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a TokenReview object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                // `Some` once a field was given (`Some(None)` for null).
                let (mut api_version, mut kind, mut spec) = (None, None, None);
                fn first<T, E: serde::de::Error>(
                    slot: &Option<T>,
                    name: &'static str,
                ) -> Result<(), E> {
                    match slot {
                        Some(_) => Err(E::duplicate_field(name)),
                        None => Ok(()),
                    }
                }
                while let Some(Text(key)) = map.next_key()? {
                    match &*key {
                        "apiVersion" => {
                            first(&api_version, "apiVersion")?;
                            api_version = Some(map.next_value::<Option<Text<'de>>>()?);
                        }
                        "kind" => {
                            first(&kind, "kind")?;
                            kind = Some(map.next_value::<Option<Text<'de>>>()?);
                        }
                        "spec" => {
                            first(&spec, "spec")?;
                            spec = Some(map.next_value()?);
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                let text = |t: Option<Option<Text<'de>>>| t.flatten().map(|Text(t)| t);
                Ok(ReviewRequest {
                    api_version: text(api_version),
                    kind: text(kind),
                    spec: spec.unwrap_or_default(),
                })
            }
        }
        d.deserialize_map(Review)
    }
}

/// A JSON string, borrowed from the input unless it has escapes. serde's own `Cow<str>`
/// is always a copy, and `#[serde(borrow)]` does not reach one inside an `Option`: that
/// was four allocations a request (`apiVersion`, `kind` and the keys of `spec`).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// A TokenReview's `spec`, read from the request and echoed in the answer as the API
/// server echoes it (k8s-openapi's `TokenReviewSpec`).
#[derive(Serialize, Default)]
pub struct ReviewSpec<'a> {
    /// The audiences asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// The token, borrowed from the request unless its JSON had escapes. Borrowed only
    /// when it needs no escape in JSON either, which the answer relies on: serde_json
    /// lends a string only when it had no escape (a quote ends it, a control character
    /// is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<Cow<'a, str>>,
}

/// Never shows the token.
impl std::fmt::Debug for ReviewSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewSpec")
            .field("audiences", &self.audiences)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl ReviewSpec<'_> {
    /// A spec asking about `token` for `audiences`, as the request's JSON would lend it.
    pub fn new(token: &str, audiences: Option<Vec<String>>) -> ReviewSpec<'_> {
        let token = if needs_escape(token.as_bytes()) {
            Cow::Owned(token.to_owned())
        } else {
            Cow::Borrowed(token)
        };
        ReviewSpec {
            audiences,
            token: Some(token),
        }
    }

    /// The token asked about.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// Read as k8s-openapi (and Go's `encoding/json`) reads a `TokenReviewSpec`: an object
/// only, unknown fields ignored, the last of duplicate fields winning.
impl<'de: 'a, 'a> Deserialize<'de> for ReviewSpec<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Spec;
        impl<'de> serde::de::Visitor<'de> for Spec {
            type Value = ReviewSpec<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a TokenReviewSpec object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut spec = ReviewSpec::default();
                while let Some(Text(key)) = map.next_key()? {
                    match &*key {
                        "audiences" => spec.audiences = map.next_value()?,
                        "token" => {
                            spec.token = map.next_value::<Option<Text<'de>>>()?.map(|Text(t)| t);
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(spec)
            }
        }
        d.deserialize_map(Spec)
    }
}

/// The body of the TokenReview answer to `spec`: the spec echoed, the verdict as
/// `status`, byte for byte as serde_json writes k8s-openapi's `TokenReview` (fields in
/// its order, empty ones left out as it leaves them out; the test below holds it to
/// that). Written by hand rather than through serde: a cache hit's answer is most of
/// what a cached review costs beyond the hash, and serde escapes every string a byte at
/// a time where nearly none needs it.
pub fn answer(api_version: &str, spec: &ReviewSpec<'_>, v: &Verdict) -> Vec<u8> {
    let token_len = spec.token.as_ref().map_or(0, |t| t.len());
    let mut out = Vec::with_capacity(token_len + 1024);
    out.extend_from_slice(b"{\"apiVersion\":");
    string(&mut out, api_version);
    out.extend_from_slice(b",\"kind\":\"TokenReview\",\"metadata\":{},\"spec\":{");
    let mut fields = Fields::default();
    if let Some(audiences) = &spec.audiences {
        fields.next(&mut out, "audiences");
        strings(&mut out, audiences.iter().map(String::as_str));
    }
    if let Some(token) = &spec.token {
        fields.next(&mut out, "token");
        match token {
            // Borrowed, it needs no escape (see the field).
            Cow::Borrowed(token) => plain_string(&mut out, token),
            Cow::Owned(token) => string(&mut out, token),
        }
    }
    out.extend_from_slice(b"},\"status\":{");
    let mut fields = Fields::default();
    if !v.audiences.is_empty() {
        fields.next(&mut out, "audiences");
        strings(&mut out, v.audiences.iter().map(String::as_str));
    }
    // Go's `omitempty`: the API server writes `authenticated` only when it is true.
    if v.authenticated {
        fields.next(&mut out, "authenticated");
        out.extend_from_slice(b"true");
    }
    if !v.error.is_empty() {
        fields.next(&mut out, "error");
        string(&mut out, &v.error);
    }
    // The API server always sends `user`, empty when unauthenticated.
    fields.next(&mut out, "user");
    out.push(b'{');
    if let Some(user) = &v.user {
        let mut fields = Fields::default();
        if !user.extra().is_empty() {
            fields.next(&mut out, "extra");
            out.push(b'{');
            let mut keys = Fields::default();
            for (key, values) in user.extra().iter() {
                keys.key(&mut out, key);
                strings(&mut out, values);
            }
            out.push(b'}');
        }
        let identity_string = if user.identity_is_plain_json() {
            plain_string
        } else {
            string
        };
        if user.groups().len() > 0 {
            fields.next(&mut out, "groups");
            strings_with(&mut out, user.groups(), identity_string);
        }
        if !user.uid().is_empty() {
            fields.next(&mut out, "uid");
            identity_string(&mut out, user.uid());
        }
        if !user.username().is_empty() {
            fields.next(&mut out, "username");
            identity_string(&mut out, user.username());
        }
    }
    out.extend_from_slice(b"}}}");
    out
}

/// Writes an object's keys, with the commas between its members.
#[derive(Default)]
struct Fields {
    started: bool,
}

impl Fields {
    /// A member named by one of the API's own field names, which need no escape.
    fn next(&mut self, out: &mut Vec<u8>, name: &'static str) {
        self.comma(out);
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    }

    /// A member named by data (an `extra` key), escaped as it needs.
    fn key(&mut self, out: &mut Vec<u8>, name: &str) {
        self.comma(out);
        string(out, name);
        out.push(b':');
    }

    fn comma(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            out.push(b',');
        }
    }
}

/// A JSON string as serde_json writes it: copied as it is unless it holds a character
/// JSON escapes (a quote, a backslash, a control character), then escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(out, s).expect("writing to a Vec does not fail");
    } else {
        plain_string(out, s);
    }
}

/// A JSON string known to need no escape.
fn plain_string(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON array of strings.
fn strings<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>) {
    strings_with(out, items, string);
}

/// The same, each item written by `string` (or [`plain_string`], known to need no escape).
fn strings_with<'a>(
    out: &mut Vec<u8>,
    items: impl Iterator<Item = &'a str>,
    string: fn(&mut Vec<u8>, &str),
) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, item);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;
    use proptest::prelude::*;

    use super::*;
    use crate::verdict::User;

    /// The answer as serde_json writes it through serde: the reference [`answer`] must
    /// match byte for byte.
    fn reference(api_version: &str, spec: &ReviewSpec<'_>, v: &Verdict) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer<'a> {
            api_version: &'a str,
            kind: &'static str,
            metadata: BTreeMap<String, String>,
            spec: &'a ReviewSpec<'a>,
            status: Status<'a>,
        }
        #[derive(Serialize)]
        struct Status<'a> {
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            audiences: &'a [String],
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            authenticated: bool,
            #[serde(skip_serializing_if = "str::is_empty")]
            error: &'a str,
            user: serde_json::Value,
        }
        let user = match &v.user {
            Some(user) => serde_json::to_value(user.to_user_info()).unwrap(),
            None => serde_json::json!({}),
        };
        serde_json::to_vec(&Answer {
            api_version,
            kind: "TokenReview",
            metadata: BTreeMap::new(),
            spec,
            status: Status {
                audiences: &v.audiences,
                authenticated: v.authenticated,
                error: &v.error,
                user,
            },
        })
        .unwrap()
    }

    fn request(body: &str) -> ReviewRequest<'_> {
        serde_json::from_str(body).unwrap()
    }

    fn verdict(user: Option<UserInfo>, audiences: &[&str], error: &str) -> Verdict {
        Verdict {
            authenticated: user.is_some(),
            user: user.map(User::from),
            audiences: crate::verdict::audiences(audiences.iter().map(|a| a.to_string()).collect()),
            error: error.into(),
        }
    }

    fn user_info(username: &str, groups: &[&str], extra: &[(&str, &[&str])]) -> UserInfo {
        UserInfo {
            username: Some(username.into()),
            uid: Some("36244d5d-279e-4808-8789-21031faf1e20".into()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            extra: Some(
                extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                    .collect(),
            ),
        }
    }

    fn same(api_version: &str, body: &str, v: &Verdict) {
        let request = request(body);
        let ours = answer(api_version, &request.spec, v);
        let theirs = reference(api_version, &request.spec, v);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }

    #[test]
    fn requests_are_read_borrowed_where_they_can_be_and_unescaped_where_not() {
        let plain = request(
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"a.b.c"}}"#,
        );
        assert!(matches!(
            plain.api_version,
            Some(Cow::Borrowed("authentication.k8s.io/v1"))
        ));
        assert!(matches!(plain.kind, Some(Cow::Borrowed("TokenReview"))));
        assert_eq!(plain.spec.token(), Some("a.b.c"));
        // Escapes in the values and in the keys, read as Go's encoding/json reads them.
        let escaped = request(
            r#"{"apiVersion":"authentication.k8s.io\/v1","kind":"Token\u0052eview","spec":{"tok\u0065n":"a.b.c","audi\u0065nces":["v"]}}"#,
        );
        assert!(
            matches!(escaped.api_version, Some(Cow::Owned(ref v)) if v == "authentication.k8s.io/v1")
        );
        assert!(matches!(escaped.kind, Some(Cow::Owned(ref k)) if k == "TokenReview"));
        assert_eq!(escaped.spec.token(), Some("a.b.c"));
        assert_eq!(escaped.spec.audiences, Some(vec!["v".to_owned()]));
        // Absent and null alike are not given; another type is refused, saying so.
        let none = request(r#"{"apiVersion":null}"#);
        assert!(none.api_version.is_none() && none.kind.is_none());
        let refused = |body: &str| {
            serde_json::from_str::<ReviewRequest<'_>>(body)
                .err()
                .unwrap_or_else(|| panic!("{body} is refused"))
                .to_string()
        };
        assert!(refused(r#"{"kind":1}"#).contains("expected a string"));
        assert!(refused("[]").contains("expected a TokenReview object"));
        assert!(refused(r#"[null,null,{"token":"a"}]"#).contains("expected a TokenReview object"));
        assert!(
            refused(r#"{"kind":null,"kind":"TokenReview"}"#).contains("duplicate field `kind`")
        );
        assert!(refused(r#"{"spec":null}"#).contains("expected a TokenReviewSpec object"));
        let other = request(r#"{"metadata":{"name":"x"},"status":7,"spec":{"token":"a"}}"#);
        assert_eq!(other.spec.token(), Some("a"));
    }

    #[test]
    fn answers_are_written_as_serde_writes_a_token_review() {
        let pod = user_info(
            "system:serviceaccount:apps:web",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:apps",
                "system:authenticated",
            ],
            &[
                (
                    "authentication.kubernetes.io/credential-id",
                    &["JTI=6b4f0c1e"],
                ),
                ("authentication.kubernetes.io/pod-name", &["web-0"]),
                ("authentication.kubernetes.io/pod-uid", &["7c5342e9"]),
                ("example.com/\"odd\"\nkey", &["a\u{1}b", "ünïcødé", ""]),
            ],
        );
        let bodies = [
            r#"{"spec":{"token":"a.b.c","audiences":["vault","other"]}}"#,
            r#"{"spec":{"token":"a.b\u002ec"}}"#,
            r#"{"spec":{"audiences":[]}}"#,
            r#"{}"#,
        ];
        let verdicts = [
            verdict(Some(pod), &["vault"], ""),
            verdict(Some(user_info("", &[], &[])), &[], ""),
            verdict(
                Some(user_info("admin", &["system:masters"], &[])),
                &["a", "b"],
                "",
            ),
            verdict(
                None,
                &[],
                "token expired at 2026-11-28T10:00:00Z (5m ago): \"quoted\"\n\t",
            ),
            verdict(None, &["vault"], ""),
        ];
        for api_version in ["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"] {
            for body in bodies {
                for v in &verdicts {
                    same(api_version, body, v);
                }
            }
        }
    }

    #[test]
    fn a_spec_made_in_code_is_answered_as_one_read_from_json() {
        const V1: &str = "authentication.k8s.io/v1";
        let v = verdict(None, &[], "");
        for token in ["a.b.c", "a\"b\\c\n\u{1}"] {
            let made = ReviewSpec::new(token, Some(vec!["vault".into()]));
            let body =
                serde_json::json!({"spec": {"audiences": ["vault"], "token": token}}).to_string();
            let read = request(&body).spec;
            assert_eq!(answer(V1, &made, &v), reference(V1, &made, &v), "{token:?}");
            assert_eq!(answer(V1, &made, &v), answer(V1, &read, &v), "{token:?}");
        }
    }

    proptest! {
        #[test]
        fn any_strings_are_written_as_serde_writes_them(
            username in any::<String>(),
            group in any::<String>(),
            key in any::<String>(),
            value in any::<String>(),
            audience in any::<String>(),
            error in any::<String>(),
        ) {
            let user = user_info(&username, &[&group], &[(&key, &[&value])]);
            let body = serde_json::json!({"spec": {"token": value, "audiences": [audience]}}).to_string();
            same("authentication.k8s.io/v1", &body, &verdict(Some(user), &[&audience], &error));
            same("authentication.k8s.io/v1", &body, &verdict(None, &[], &error));
        }
    }
}
