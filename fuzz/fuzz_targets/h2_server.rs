//! Arbitrary bytes after the HTTP/2 preface, through the gateway's own HTTP/2 server: it must
//! never panic and must end once the client has closed (see `splitgate::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    splitgate::fuzzing::h2_connection(data);
});
