//! Prefix-coded integers (RFC 7541 §5.1): the low bits of a first byte, then 7 bits per byte
//! while the top bit says more follow.

use super::DecodeError;

/// Continuation bytes one integer may use: five carry 35 bits, enough for any 32-bit value
/// after the prefix. A sixth can only be padding or overflow, so it is refused.
const MAX_CONTINUATION_BYTES: u32 = 5;

/// Reads the integer whose first byte is `block[*pos]`, using its low `prefix_bits` bits
/// (1 to 8; the bits above them are the caller's flags), and moves `pos` past it.
///
/// Values above `u32::MAX` are refused: nothing in a header block needs more, and a cap keeps
/// lengths and indexes from overflowing anywhere downstream.
pub(super) fn decode(
    block: &[u8],
    pos: &mut usize,
    prefix_bits: u32,
) -> Result<usize, DecodeError> {
    let mask = (1u32 << prefix_bits) - 1;
    let first = *block.get(*pos).ok_or(DecodeError::Truncated)?;
    *pos += 1;
    let prefix = u32::from(first) & mask;
    if prefix < mask {
        return Ok(prefix as usize);
    }
    let mut value = u64::from(prefix);
    let mut shift = 0;
    for _ in 0..MAX_CONTINUATION_BYTES {
        let byte = *block.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        value += u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value)
                .map(|v| v as usize)
                .map_err(|_| DecodeError::IntegerOverflow);
        }
        shift += 7;
    }
    Err(DecodeError::IntegerOverflow)
}

/// Appends `value` with a `prefix_bits` prefix (1 to 8), `flags` filling the first byte's
/// bits above the prefix.
pub(super) fn encode(dst: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        dst.push(flags | value as u8);
        return;
    }
    dst.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        dst.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.push(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8], prefix_bits: u32) -> Result<(usize, usize), DecodeError> {
        let mut pos = 0;
        decode(bytes, &mut pos, prefix_bits).map(|v| (v, pos))
    }

    fn encoded(value: usize, prefix_bits: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, 0, prefix_bits, value);
        out
    }

    #[test]
    fn rfc_examples() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42 at a byte
        // boundary (8-bit prefix).
        assert_eq!(encoded(10, 5), [0x0a]);
        assert_eq!(encoded(1337, 5), [0x1f, 0x9a, 0x0a]);
        assert_eq!(encoded(42, 8), [0x2a]);
        assert_eq!(decoded(&[0x0a], 5), Ok((10, 1)));
        assert_eq!(decoded(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
        assert_eq!(decoded(&[0x2a], 8), Ok((42, 1)));
    }

    #[test]
    fn flag_bits_above_the_prefix_are_ignored() {
        assert_eq!(decoded(&[0xea], 5), Ok((10, 1)));
        assert_eq!(decoded(&[0xff, 0x9a, 0x0a], 5), Ok((1337, 3)));
        let mut out = Vec::new();
        encode(&mut out, 0xe0, 5, 1337);
        assert_eq!(out, [0xff, 0x9a, 0x0a]);
    }

    #[test]
    fn prefix_boundaries_round_trip() {
        for prefix_bits in 1..=8 {
            let mask = (1usize << prefix_bits) - 1;
            for (value, len) in [
                (0, 1),
                (mask - 1, 1),
                (mask, 2),
                (mask + 1, 2),
                (mask + 127, 2),
                (mask + 128, 3),
                (mask + 16_383, 3),
                (mask + 16_384, 4),
                (u32::MAX as usize, 6),
            ] {
                let bytes = encoded(value, prefix_bits);
                assert_eq!(bytes.len(), len, "{value} with {prefix_bits}-bit prefix");
                assert_eq!(decoded(&bytes, prefix_bits), Ok((value, len)));
            }
        }
    }

    #[test]
    fn the_prefix_alone_ends_the_integer_below_the_mask() {
        // 30 with a 5-bit prefix fits; 31 needs a continuation byte even when it adds 0.
        assert_eq!(decoded(&[0x1e, 0xff], 5), Ok((30, 1)));
        assert_eq!(decoded(&[0x1f, 0x00], 5), Ok((31, 2)));
        assert_eq!(decoded(&[0x1f], 5), Err(DecodeError::Truncated));
    }

    #[test]
    fn overflow_is_refused() {
        // u32::MAX with a 5-bit prefix is 31 + 0xffff_ffe0, written in 5 continuation bytes.
        let max = encoded(u32::MAX as usize, 5);
        assert_eq!(max, [0x1f, 0xe0, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decoded(&max, 5), Ok((u32::MAX as usize, 6)));
        // One more does not fit in 32 bits.
        assert_eq!(
            decoded(&[0x1f, 0xe1, 0xff, 0xff, 0xff, 0x0f], 5),
            Err(DecodeError::IntegerOverflow)
        );
        assert_eq!(
            decoded(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f], 5),
            Err(DecodeError::IntegerOverflow)
        );
        // A sixth continuation byte, even one adding only zeros, is refused.
        assert_eq!(
            decoded(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 5),
            Err(DecodeError::IntegerOverflow)
        );
        // Endless continuation stops at the limit, not at the end of the input.
        assert_eq!(decoded(&[0xff; 64], 7), Err(DecodeError::IntegerOverflow));
    }

    #[test]
    fn truncation_is_reported() {
        assert_eq!(decoded(&[], 7), Err(DecodeError::Truncated));
        assert_eq!(decoded(&[0x7f], 7), Err(DecodeError::Truncated));
        assert_eq!(decoded(&[0x7f, 0x80, 0x80], 7), Err(DecodeError::Truncated));
    }
}
