#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| capgate_testkit::fuzz::meta(data));
