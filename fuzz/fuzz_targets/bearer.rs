//! The `Authorization` header, as any byte string a client can send: parsed by
//! `tokengate::http::bearer` (TokenReview callers and `/auth`), then what it yields goes
//! through the local pipeline.

#![no_main]

mod common;

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return; // hyper refuses such a header before the gate sees it
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    if let Some(token) = tokengate::http::bearer(&headers) {
        assert!(!token.is_empty());
        assert_eq!(token, token.trim());
        let text = std::str::from_utf8(data).expect("bearer reads only text");
        assert!(text.contains(token));
        common::local_checks(token, &["vault".to_string()]);
    }
});
