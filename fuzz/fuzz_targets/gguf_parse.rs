//! libFuzzer driver for [`troupe_fuzz::targets::gguf_parse`] (built and run by `fuzz/run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| troupe_fuzz::targets::gguf_parse::run(data));
