//! Arbitrary bytes as a connection's HPACK header blocks, through one `Decoder`. It must never
//! panic, never let its table outgrow the size we allow, and never hand out more than the
//! list-size limit. Every block that decodes is encoded again with the stateless encoder,
//! which must decode, on a fresh decoder that indexes nothing, to the same fields.
//!
//! Input: one byte of settings (bits 0-1 pick the table size: 0, 64, 256 or 4096; bit 2 a
//! small list-size limit), then blocks, each a length byte and that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitgate::http2::hpack::{encode_field, encode_status, DecodeError, Decoder};

type Fields = Vec<(Vec<u8>, Vec<u8>, bool)>;

fn decode(
    decoder: &mut Decoder,
    block: &[u8],
    max_list_size: usize,
) -> (Fields, Result<(), DecodeError>) {
    let mut fields = Vec::new();
    let result = decoder.decode(block, max_list_size, |f| {
        fields.push((f.name.to_vec(), f.value.to_vec(), f.sensitive));
    });
    (fields, result)
}

/// The status code `encode_status` writes as this value, if any.
fn status_code(value: &[u8]) -> Option<u16> {
    match value {
        [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, mut rest)) = data.split_first() else {
        return;
    };
    let max_table_size = [0, 64, 256, 4096][usize::from(settings & 3)];
    let max_list_size = if settings & 4 != 0 { 300 } else { usize::MAX };
    let mut decoder = Decoder::new(max_table_size);
    while let Some((&len, tail)) = rest.split_first() {
        let (block, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;

        let (fields, result) = decode(&mut decoder, block, max_list_size);
        assert!(
            decoder.table_size() <= max_table_size,
            "the table outgrew its limit"
        );
        let list_size: usize = fields.iter().map(|(n, v, _)| n.len() + v.len() + 32).sum();
        assert!(
            list_size <= max_list_size,
            "fields past the list-size limit were handed out"
        );
        match result {
            Ok(()) => {}
            // The block was read to the end: the connection goes on.
            Err(DecodeError::ListTooLarge) => continue,
            // The decoding state is unusable from here on.
            Err(_) => return,
        }

        let mut encoded = Vec::new();
        for (name, value, sensitive) in &fields {
            match status_code(value) {
                Some(code) if name == b":status" && !sensitive => encode_status(code, &mut encoded),
                _ => encode_field(name, value, *sensitive, &mut encoded),
            }
        }
        let mut fresh = Decoder::new(4096);
        let (again, result) = decode(&mut fresh, &encoded, usize::MAX);
        assert_eq!(result, Ok(()), "the encoder's output does not decode");
        assert_eq!(
            again, fields,
            "the encoder's output decodes to other fields"
        );
        assert_eq!(
            fresh.table_len(),
            0,
            "the encoder's output added to the dynamic table"
        );
    }
});
