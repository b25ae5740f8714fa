//! libFuzzer driver for [`troupe_fuzz::targets::tokenizer`] (built and run by `fuzz/run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| troupe_fuzz::targets::tokenizer::run(data));
