//! Arbitrary bytes as a chunked request body, through the listener's chunked decoder: whole
//! and in pieces. It must never panic, never yield more bytes than it was given, and decode the
//! same data with the same outcome however the bytes arrive (see `splitgate::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    splitgate::fuzzing::chunked_body(data);
});
