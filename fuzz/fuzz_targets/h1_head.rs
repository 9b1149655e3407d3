//! Arbitrary bytes as a client's request head, through the listener's own HTTP/1.1 head parser:
//! whole and fed in two pieces, under the default limits and small ones. It must never panic,
//! and must reach the same decision however the bytes arrive (see `splitgate::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    splitgate::fuzzing::server_head(data);
});
