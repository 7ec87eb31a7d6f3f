//! The JSON inside a token: `HEADER \xff CLAIMS` (or just `CLAIMS` under the sim's
//! header) base64url-encoded into a JWT, so the fuzzer spends its time in the strict JSON
//! reader and the claim rules rather than in base64.

#![no_main]

mod common;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (header, claims) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&br#"{"alg":"ES256","kid":"k1"}"#[..], data),
    };
    let raw = format!("{}.{}.c2lnbmF0dXJl", b64(header), b64(claims));
    common::local_checks(&raw, &["vault".to_string()]);
    common::local_checks(&raw, &common::issuers());
});
