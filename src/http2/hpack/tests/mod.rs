//! Tests of the whole codec: the RFC 7541 Appendix C examples, every decoding error and limit,
//! and encoder round trips. (Integers, the Huffman code and the table have their own.)

mod appendix_c;
mod errors;
mod round_trip;

use super::*;

/// Bytes from hex digits, spaces ignored.
pub(super) fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

type Owned = (String, String, bool);

fn owned(field: Field<'_>) -> Owned {
    (
        String::from_utf8_lossy(field.name).into_owned(),
        String::from_utf8_lossy(field.value).into_owned(),
        field.sensitive,
    )
}

fn decode(
    decoder: &mut Decoder,
    block: &[u8],
    max_list_size: usize,
) -> (Vec<Owned>, Result<(), DecodeError>) {
    let mut fields = Vec::new();
    let result = decoder.decode(block, max_list_size, |f| fields.push(owned(f)));
    (fields, result)
}

fn decode_ok(decoder: &mut Decoder, block: &[u8]) -> Vec<Owned> {
    let (fields, result) = decode(decoder, block, usize::MAX);
    assert_eq!(result, Ok(()));
    fields
}

fn decode_err(decoder: &mut Decoder, block: &[u8]) -> DecodeError {
    decode(decoder, block, usize::MAX).1.unwrap_err()
}

fn plain(list: &[(&str, &str)]) -> Vec<Owned> {
    list.iter()
        .map(|&(n, v)| (n.to_owned(), v.to_owned(), false))
        .collect()
}

fn table(decoder: &Decoder) -> Vec<(String, String)> {
    (0..decoder.table_len())
        .map(|i| {
            let (n, v) = decoder.table.get(62 + i).unwrap();
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}
