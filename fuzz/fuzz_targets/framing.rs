//! Any byte stream in any split, with a line limit and pauses chosen by the first bytes: see
//! `herd_fuzz::check_framing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz::check_framing(data));
