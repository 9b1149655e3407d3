//! Arbitrary bytes through the gateway's own HTTP/1 head handling: as a client's request head
//! (Host rules, hop-by-hop and x-forwarded-* rewriting, the head written upstream) and as an
//! upstream's response (head, framing, chunked body and trailers). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    splitgate::fuzzing::request_head(data);
    splitgate::fuzzing::response(data);
});
