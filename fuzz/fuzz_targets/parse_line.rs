//! Any bytes as one line: see `herd_fuzz::check_parse_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz::check_parse_line(data));
