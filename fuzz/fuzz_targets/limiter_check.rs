//! libFuzzer driver for [`troupe_fuzz::targets::limiter_check`] (built and run by `fuzz/run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| troupe_fuzz::targets::limiter_check::run(data));
