//! Every `DecodeError`, reached by a crafted block, and the limits: table size updates and
//! the header list size.

use super::super::huffman::tests::encode as huffman_encode;
use super::appendix_c::{C3_1, C3_2, REQUEST_1, REQUEST_2};
use super::*;

#[test]
fn truncated_blocks() {
    for block in [
        &[0x40, 0x05, b'a'][..], // literal name of 5 bytes, 1 there
        &[0x04],                 // value missing
        &[0x04, 0x03, b'a'],     // value cut short
        &[0xff],                 // index continues past the end
        &[0x00],                 // literal name missing
        &[0x3f],                 // size update continues past the end
        &[0x04, 0x85, 0xf1],     // Huffman value cut short
    ] {
        assert_eq!(
            decode_err(&mut Decoder::new(4096), block),
            DecodeError::Truncated,
            "{block:02x?}"
        );
    }
}

#[test]
fn integer_overflow() {
    let mut decoder = Decoder::new(4096);
    assert_eq!(
        decode_err(&mut decoder, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        DecodeError::IntegerOverflow
    );
    // A string length past 32 bits.
    assert_eq!(
        decode_err(
            &mut Decoder::new(4096),
            &[0x04, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f]
        ),
        DecodeError::IntegerOverflow
    );
}

#[test]
fn bad_indexes() {
    assert_eq!(
        decode_err(&mut Decoder::new(4096), &[0x80]),
        DecodeError::BadIndex(0)
    );
    // 62 is the first dynamic entry, and the table is empty.
    assert_eq!(
        decode_err(&mut Decoder::new(4096), &[0xbe]),
        DecodeError::BadIndex(62)
    );
    // A literal's name index past the end: 15 + 55 = 70.
    assert_eq!(
        decode_err(&mut Decoder::new(4096), &[0x0f, 0x37, 0x00]),
        DecodeError::BadIndex(70)
    );
    // After C.3.1 the table has one entry: 62 is there, 63 is not.
    let mut decoder = Decoder::new(4096);
    decode_ok(&mut decoder, &hex(C3_1));
    assert_eq!(decode_ok(&mut decoder, &[0xbe])[0].1, "www.example.com");
    assert_eq!(decode_err(&mut decoder, &[0xbf]), DecodeError::BadIndex(63));
}

#[test]
fn huffman_errors() {
    // :path with a Huffman value of 32 ones: EOS.
    assert_eq!(
        decode_err(
            &mut Decoder::new(4096),
            &[0x04, 0x84, 0xff, 0xff, 0xff, 0xff]
        ),
        DecodeError::HuffmanEos
    );
    // Eight bits of padding.
    assert_eq!(
        decode_err(&mut Decoder::new(4096), &[0x04, 0x81, 0xff]),
        DecodeError::HuffmanPadding
    );
    // 'a' (00011) padded with zeros; and in a literal name.
    assert_eq!(
        decode_err(&mut Decoder::new(4096), &[0x04, 0x81, 0x18]),
        DecodeError::HuffmanPadding
    );
    assert_eq!(
        decode_err(&mut Decoder::new(4096), &[0x00, 0x81, 0x18, 0x00]),
        DecodeError::HuffmanPadding
    );
}

#[test]
fn table_size_updates() {
    let mut decoder = Decoder::new(4096);
    decode_ok(&mut decoder, &hex(C3_1));
    assert_eq!(decoder.table_size(), 57);
    // Two updates in a row (to 0, then back to 4096: 31 + 97 + 31 * 128) empty the table and
    // allow it to fill again.
    let fields = decode_ok(&mut decoder, &[0x20, 0x3f, 0xe1, 0x1f, 0x82]);
    assert_eq!(fields, plain(&[(":method", "GET")]));
    assert_eq!((decoder.table_len(), decoder.table_size()), (0, 0));
    decode_ok(&mut decoder, &hex(C3_1));
    assert_eq!(decoder.table_size(), 57);
    // An update to 4097 is more than we allow.
    assert_eq!(
        decode_err(&mut decoder, &[0x3f, 0xe2, 0x1f]),
        DecodeError::TableSizeTooLarge(4097)
    );
}

#[test]
fn a_smaller_table_evicts_and_limits_later_inserts() {
    let mut decoder = Decoder::new(4096);
    decode_ok(&mut decoder, &hex(C3_1));
    decode_ok(&mut decoder, &hex(C3_2));
    assert_eq!(decoder.table_size(), 110);
    // Size 60 keeps only cache-control: no-cache (53).
    decode_ok(&mut decoder, &[0x3f, 0x1d]);
    assert_eq!(
        table(&decoder),
        [("cache-control".to_owned(), "no-cache".to_owned())]
    );
    // :authority: www.example.com (57) then evicts it.
    decode_ok(
        &mut decoder,
        &hex("41 0f 7777 772e 6578 616d 706c 652e 636f 6d"),
    );
    assert_eq!(
        table(&decoder),
        [(":authority".to_owned(), "www.example.com".to_owned())]
    );
}

#[test]
fn table_size_update_after_a_field_is_refused() {
    let mut decoder = Decoder::new(4096);
    assert_eq!(
        decode_err(&mut decoder, &[0x82, 0x20]),
        DecodeError::LateTableSizeUpdate
    );
    let mut decoder = Decoder::new(4096);
    assert_eq!(
        decode_err(&mut decoder, &[0x20, 0x82, 0x3f, 0xe1, 0x1f]),
        DecodeError::LateTableSizeUpdate
    );
}

#[test]
fn list_too_large_keeps_the_table_in_step() {
    let mut decoder = Decoder::new(4096);
    // C.3.1's fields cost 42, 43, 38 and 57: the third passes 100.
    let (fields, result) = decode(&mut decoder, &hex(C3_1), 100);
    assert_eq!(result, Err(DecodeError::ListTooLarge));
    assert_eq!(fields, plain(&REQUEST_1[..2]));
    // The :authority entry was still added, so the next block refers to it correctly.
    assert_eq!(
        table(&decoder),
        [(":authority".to_owned(), "www.example.com".to_owned())]
    );
    assert_eq!(decode_ok(&mut decoder, &hex(C3_2)), plain(&REQUEST_2));
    assert_eq!(decoder.table_size(), 110);
    // Exactly at the limit is allowed.
    let mut decoder = Decoder::new(4096);
    let (fields, result) = decode(&mut decoder, &hex(C3_1), 180);
    assert_eq!((fields.len(), result), (4, Ok(())));
}

#[test]
fn scratch_buffers_keep_name_and_value_apart() {
    // A Huffman name and a Huffman value in one literal, inserted, then read back by index.
    let name = huffman_encode(b"x-my-names");
    let value = huffman_encode(b"some value");
    let mut block = vec![0x40, 0x80 | name.len() as u8];
    block.extend(&name);
    block.push(0x80 | value.len() as u8);
    block.extend(&value);
    block.push(0xbe);
    let mut decoder = Decoder::new(4096);
    let want = plain(&[("x-my-names", "some value"), ("x-my-names", "some value")]);
    assert_eq!(decode_ok(&mut decoder, &block), want);
}

#[test]
fn errors_read_well() {
    assert_eq!(
        DecodeError::BadIndex(70).to_string(),
        "the header block refers to table index 70, which does not exist"
    );
    assert_eq!(
        DecodeError::ListTooLarge.to_string(),
        "the header list is larger than allowed"
    );
}
