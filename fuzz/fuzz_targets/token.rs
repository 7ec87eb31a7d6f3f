//! A bearer token as the gate receives it (any text), through the parser and the local
//! checks.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    common::local_checks(&raw, &["vault".to_string()]);
    common::local_checks(&raw, &common::issuers());
});
