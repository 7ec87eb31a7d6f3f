//! The two readings of an `Authorization` header: RFC 6750's for `/auth`, and the API
//! server's own for the callers of the TokenReview endpoints (so a caller is who the API
//! server would take it for). They differ on purpose.

use axum::http::{HeaderMap, header};

/// The token of an `Authorization: Bearer` header (scheme case-insensitive, as RFC 6750),
/// when the header's value is visible ASCII (`HeaderValue::to_str`).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.get(bearer_token(value.as_bytes())?)
}

/// Where the token is in an `Authorization` value: after the scheme `Bearer` (any case)
/// and the first space, without the spaces and tabs around it; `None` for another scheme
/// or no token.
fn bearer_token(value: &[u8]) -> Option<std::ops::Range<usize>> {
    let space = value.iter().position(|&b| b == b' ')?;
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = space + 1 + value[space + 1..].iter().take_while(|b| blank(b)).count();
    let end = value.len() - value[start..].iter().rev().take_while(|b| blank(b)).count();
    (value[..space].eq_ignore_ascii_case(b"bearer") && start < end).then_some(start..end)
}

/// The caller's token on the TokenReview endpoints, read as the API server's bearer-token
/// authenticator reads it, so that a caller is who the API server would take it for: the
/// first `Authorization` header, trimmed, `Bearer` in any case, then the word after the
/// first space. `Bearer  TOKEN` (two spaces) or `Bearer\tTOKEN` carries no token.
/// Only the token itself must be text (visible ASCII or tabs); what follows it is ignored,
/// as the API server ignores it.
pub(super) fn caller_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let token = value.get(caller_token_range(value)?)?;
    let text = token
        .iter()
        .all(|b| *b == b'\t' || (b' '..=b'~').contains(b));
    if text {
        std::str::from_utf8(token).ok()
    } else {
        None
    }
}

/// Go's `strings.TrimSpace`, then `strings.SplitN(value, " ", 3)`: the second part, when
/// the first is `bearer` in any case and the second is not empty.
fn caller_token_range(value: &[u8]) -> Option<std::ops::Range<usize>> {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = value.iter().position(|b| !space(b))?;
    let end = value.len() - value.iter().rev().take_while(|b| space(b)).count();
    let scheme_end = start + value[start..end].iter().position(|&b| b == b' ')?;
    let token_start = scheme_end + 1;
    let token_end = value[token_start..end]
        .iter()
        .position(|&b| b == b' ')
        .map_or(end, |i| token_start + i);
    (value[start..scheme_end].eq_ignore_ascii_case(b"bearer") && token_start < token_end)
        .then_some(token_start..token_end)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{bearer, caller_token};
    use axum::http::{HeaderMap, HeaderValue, header};

    /// The API server's reading (k8s.io/apiserver's bearertoken), as written there.
    fn reference(value: &HeaderValue) -> Option<String> {
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = value.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
        let mut parts = value.splitn(3, ' ');
        let (scheme, token) = (parts.next()?, parts.next()?);
        let text = token.chars().all(|c| c == '\t' || (' '..='~').contains(&c));
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && text)
            .then(|| token.to_owned())
    }

    fn headers(value: &[u8]) -> Option<HeaderMap> {
        let value = HeaderValue::from_bytes(value).ok()?;
        Some(HeaderMap::from_iter([(header::AUTHORIZATION, value)]))
    }

    #[test]
    fn auth_reads_the_token_of_a_bearer_value_as_rfc_6750() {
        for (value, token) in [
            ("Bearer abc.def", Some("abc.def")),
            ("bEaReR \t abc \t", Some("abc")),
            ("Bearer a b", Some("a b")),
            ("Bearer  ", None),
            ("Bearer", None),
            ("Bearer\tabc", None),
            ("Basic abc", None),
        ] {
            let map = headers(value.as_bytes()).unwrap();
            assert_eq!(bearer(&map), token, "{value:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn a_caller_token_is_read_as_the_api_server_reads_it() {
        for (value, token) in [
            ("Bearer abc.def", Some("abc.def")),
            (" bEaReR abc \t", Some("abc")),
            ("Bearer a b", Some("a")),
            ("Bearer  abc", None),
            ("Bearer \tabc", Some("\tabc")),
            ("Bearer\tabc", None),
            ("Bearer", None),
            ("Basic abc", None),
        ] {
            let map = headers(value.as_bytes()).unwrap();
            assert_eq!(caller_token(&map), token, "{value:?}");
            assert_eq!(
                caller_token(&map).map(str::to_owned),
                reference(&map[header::AUTHORIZATION]),
                "{value:?}"
            );
        }
        assert_eq!(caller_token(&HeaderMap::new()), None);
    }

    proptest! {
        /// `caller_token` reads every value as the API server does, bytes that are
        /// not text included.
        #[test]
        fn a_caller_token_of_any_bytes_is_read_as_the_api_server_reads_it(
            value in proptest::collection::vec(
                prop::sample::select(b"BbEeAaRrx .\t\x80\xe9\x7f\x01".to_vec()), 0..14),
            prefix in prop::sample::select(vec!["", "Bearer ", "bearer\t ", "Basic "]),
        ) {
            let value = [prefix.as_bytes(), &value].concat();
            let Some(map) = headers(&value) else { return Ok(()) };
            prop_assert_eq!(
                caller_token(&map).map(str::to_owned),
                reference(&map[header::AUTHORIZATION])
            );
        }
    }
}
