//! The TokenReview wire format, as the API server reads and writes it.
//!
//! Responsible for: reading a TokenReview request's `spec` as k8s-openapi and Go's
//! `encoding/json` read it (an object, unknown fields ignored, the last of duplicate
//! fields winning; Go's case-insensitive key matching is not followed), with the token
//! borrowed from the body; and writing the answer in
//! k8s-openapi's field order from borrowed parts: the request's spec (the token's JSON
//! copied as it came) and the shared verdict.
//!
//! Not responsible for: HTTP (see `http`), or deciding anything.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cache::Verdict;
use crate::user::User;

/// A TokenReview as callers send it: either API version, `kind` checked by hand. The
/// token is borrowed from the body (unless it has JSON escapes), not copied.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRequest<'a> {
    /// `apiVersion`, when given.
    #[serde(borrow)]
    pub api_version: Option<Cow<'a, str>>,
    /// `kind`, when given.
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
    /// `spec`.
    #[serde(default)]
    pub spec: ReviewSpec<'a>,
}

/// A TokenReview's `spec`, read from the request and echoed in the answer as the API
/// server echoes it (k8s-openapi's `TokenReviewSpec`).
#[derive(Serialize, Default)]
pub struct ReviewSpec<'a> {
    /// The audiences asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// The token as the request's JSON spelt it, echoed as it came: the same string,
    /// copied rather than escaped again (a token is most of an answer's bytes).
    #[serde(rename = "token", skip_serializing_if = "Option::is_none")]
    token_json: Option<Cow<'a, RawValue>>,
    /// The token, borrowed from the request unless its JSON had escapes.
    #[serde(skip)]
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
    /// A spec asking about `token` for `audiences`.
    pub fn new(token: &str, audiences: Option<Vec<String>>) -> ReviewSpec<'static> {
        let json = serde_json::to_string(token).expect("a string serialises");
        ReviewSpec {
            audiences,
            token_json: Some(Cow::Owned(
                RawValue::from_string(json).expect("a JSON string"),
            )),
            token: Some(Cow::Owned(token.to_owned())),
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
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "audiences" => spec.audiences = map.next_value()?,
                        "token" => {
                            let json: Option<&'de RawValue> = map.next_value()?;
                            spec.token = json.map(string_of).transpose()?;
                            spec.token_json = json.map(Cow::Borrowed);
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(spec)
            }
        }
        /// The string a JSON value spells, borrowed when it needs no unescaping.
        fn string_of<E: serde::de::Error>(json: &RawValue) -> Result<Cow<'_, str>, E> {
            let text = json.get();
            match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(plain) if !plain.contains('\\') => Ok(Cow::Borrowed(plain)),
                Some(_) => serde_json::from_str(text)
                    .map(Cow::Owned)
                    .map_err(|e| E::custom(format!("spec.token: {e}"))),
                None => Err(E::invalid_type(
                    serde::de::Unexpected::Other("a JSON value that is not a string"),
                    &"a string",
                )),
            }
        }
        d.deserialize_map(Spec)
    }
}

/// A TokenReview answer, written as k8s-openapi writes a `TokenReview` (fields in its
/// order) from the request's spec and the verdict, neither of them copied: writing a
/// cache hit's answer allocates nothing but the body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewAnswer<'a> {
    api_version: &'a str,
    kind: &'static str,
    metadata: EmptyObject,
    spec: &'a ReviewSpec<'a>,
    status: StatusAnswer<'a>,
}

#[derive(Serialize)]
struct StatusAnswer<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    audiences: &'a [String],
    authenticated: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    /// The API server always sends `user`, empty when unauthenticated.
    #[serde(serialize_with = "user_or_empty")]
    user: Option<&'a User>,
}

fn user_or_empty<S: serde::Serializer>(user: &Option<&User>, s: S) -> Result<S::Ok, S::Error> {
    match user {
        Some(user) => user.serialize(s),
        None => EmptyObject.serialize(s),
    }
}

/// `{}`.
struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        s.serialize_map(Some(0))?.end()
    }
}

/// The body of the TokenReview answer to `spec`: the spec echoed, the verdict as `status`.
pub fn answer(api_version: &str, spec: &ReviewSpec<'_>, v: &Verdict) -> Vec<u8> {
    let answer = ReviewAnswer {
        api_version,
        kind: "TokenReview",
        metadata: EmptyObject,
        spec,
        status: StatusAnswer {
            audiences: &v.audiences,
            authenticated: v.authenticated,
            error: &v.error,
            user: v.user.as_ref(),
        },
    };
    let token_len = spec.token_json.as_ref().map_or(0, |t| t.get().len());
    let mut body = Vec::with_capacity(token_len + 1024);
    serde_json::to_writer(&mut body, &answer).expect("a TokenReview serialises");
    body
}
