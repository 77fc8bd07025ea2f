//! Any bytes as an HTTP response, in a split chosen by the first bytes: see
//! `herd_fuzz::check_http_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz::check_http_response(data));
