//! Arbitrary bytes as a config file's text: parse and validate must answer with a config or a
//! list of errors, never panic, abort or take unbounded memory (alias bombs included).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The loader reads text; bytes that are not UTF-8 are refused before it (config::load_hashed).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = splitgate::config::from_str(text, "fuzz input") {
        // A config that validates must compile into a runtime, as a reload would.
        let _ = splitgate::config::compile(&config, None, 1);
    }
});
