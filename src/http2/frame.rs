//! HTTP/2 frames (RFC 9113 §4 and §6): the 9-byte frame header as read, and the frames the
//! server writes, appended to its write buffer.

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 9;
/// The largest frame payload either side may send until told otherwise (and the one the
/// gateway keeps: it never raises `SETTINGS_MAX_FRAME_SIZE`).
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// The largest `SETTINGS_MAX_FRAME_SIZE` a peer may ask for.
pub const MAX_MAX_FRAME: u32 = (1 << 24) - 1;
/// The largest flow-control window.
pub const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Every window's size before SETTINGS or WINDOW_UPDATE change it.
pub const DEFAULT_WINDOW: i64 = 65_535;

/// Frame types.
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// PRIORITY.
    pub const PRIORITY: u8 = 0x2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PUSH_PROMISE.
    pub const PUSH_PROMISE: u8 = 0x5;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// DATA, HEADERS: the sender's last frame on the stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION: the header block ends here.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS: a pad length byte leads the payload.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: five bytes of priority follow the pad length.
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers.
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
    pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
}

/// Error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    /// Graceful shutdown, or a stream the server no longer needs.
    pub const NO_ERROR: Reason = Reason(0x0);
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    /// The gateway failed.
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    /// The peer broke flow control.
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    /// A frame for a stream already closed.
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    /// A frame of the wrong size.
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    /// A stream refused before any processing: the client may retry it.
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    /// The stream is no longer needed.
    pub const CANCEL: Reason = Reason(0x8);
    /// The header compression state cannot go on.
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    /// The peer generates load the gateway will not carry.
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
}

/// A frame header as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Payload length.
    pub len: usize,
    /// Type (see [`kind`]).
    pub kind: u8,
    /// Flags (see [`flag`]).
    pub flags: u8,
    /// Stream identifier, the reserved bit cleared.
    pub stream: u32,
}

impl Head {
    /// Reads a frame header from the first [`HEADER_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Whether `f` is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// A big-endian u32 from the first four bytes of `b`.
pub fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The payload of a DATA or HEADERS frame without its padding; `None` when the pad length
/// leaves no room (a PROTOCOL_ERROR).
pub fn unpadded(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    if flags & flag::PADDED == 0 {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
}

/// Appends a frame header.
pub fn head(dst: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME as usize);
    let l = (len as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    dst.extend_from_slice(&[l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]);
}

/// Appends a SETTINGS frame with `values`.
pub fn settings(dst: &mut Vec<u8>, values: &[(u16, u32)]) {
    head(dst, values.len() * 6, kind::SETTINGS, 0, 0);
    for &(id, v) in values {
        dst.extend_from_slice(&id.to_be_bytes());
        dst.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a SETTINGS acknowledgement.
pub fn settings_ack(dst: &mut Vec<u8>) {
    head(dst, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Appends a PING acknowledgement carrying `payload` (eight bytes).
pub fn ping_ack(dst: &mut Vec<u8>, payload: &[u8]) {
    head(dst, 8, kind::PING, flag::ACK, 0);
    dst.extend_from_slice(payload);
}

/// Appends a GOAWAY naming `last` as the last stream processed.
pub fn goaway(dst: &mut Vec<u8>, last: u32, reason: Reason) {
    head(dst, 8, kind::GOAWAY, 0, 0);
    dst.extend_from_slice(&last.to_be_bytes());
    dst.extend_from_slice(&reason.0.to_be_bytes());
}

/// Appends an RST_STREAM.
pub fn rst(dst: &mut Vec<u8>, stream: u32, reason: Reason) {
    head(dst, 4, kind::RST_STREAM, 0, stream);
    dst.extend_from_slice(&reason.0.to_be_bytes());
}

/// Appends a WINDOW_UPDATE of `increment` (1 to 2^31-1).
pub fn window_update(dst: &mut Vec<u8>, stream: u32, increment: u32) {
    head(dst, 4, kind::WINDOW_UPDATE, 0, stream);
    dst.extend_from_slice(&increment.to_be_bytes());
}

/// Appends a header block as a HEADERS frame and as many CONTINUATION frames as `max_frame`
/// requires.
pub fn header_block(
    dst: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut chunks = block.chunks(max_frame.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let mut end_headers = first.len() == block.len();
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if end_headers {
        flags |= flag::END_HEADERS;
    }
    head(dst, first.len(), kind::HEADERS, flags, stream);
    dst.extend_from_slice(first);
    let mut sent = first.len();
    while !end_headers {
        let chunk = chunks.next().unwrap_or(&[]);
        sent += chunk.len();
        end_headers = sent == block.len();
        let flags = if end_headers { flag::END_HEADERS } else { 0 };
        head(dst, chunk.len(), kind::CONTINUATION, flags, stream);
        dst.extend_from_slice(chunk);
    }
}

/// Appends a DATA frame.
pub fn data(dst: &mut Vec<u8>, stream: u32, data: &[u8], end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    head(dst, data.len(), kind::DATA, flags, stream);
    dst.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written_with_the_reserved_bit_cleared() {
        let mut b = Vec::new();
        head(&mut b, 0x01_02_03, kind::HEADERS, 0x25, 7);
        assert_eq!(b, [1, 2, 3, 1, 0x25, 0, 0, 0, 7]);
        b[5] |= 0x80;
        let h = Head::parse(&b);
        assert_eq!((h.len, h.kind, h.flags, h.stream), (0x01_02_03, 1, 0x25, 7));
        assert!(h.has(flag::END_HEADERS) && h.has(flag::PRIORITY) && !h.has(flag::PADDED));
    }

    #[test]
    fn padding_is_stripped_and_padding_past_the_payload_refused() {
        assert_eq!(unpadded(0, b"abc"), Some(&b"abc"[..]));
        assert_eq!(unpadded(flag::PADDED, b"\x02abcXY"), Some(&b"abc"[..]));
        assert_eq!(unpadded(flag::PADDED, b"\x03ab"), None);
        assert_eq!(unpadded(flag::PADDED, b""), None);
        assert_eq!(unpadded(flag::PADDED, b"\x00"), Some(&b""[..]));
    }

    #[test]
    fn a_long_header_block_goes_on_in_continuation_frames() {
        let block: Vec<u8> = (0..25u8).collect();
        let mut b = Vec::new();
        header_block(&mut b, 3, &block, true, 10);
        let mut at = 0;
        let mut seen = Vec::new();
        let mut got = Vec::new();
        while at < b.len() {
            let h = Head::parse(&b[at..]);
            seen.push((h.kind, h.flags, h.len));
            got.extend_from_slice(&b[at + 9..at + 9 + h.len]);
            at += 9 + h.len;
        }
        assert_eq!(got, block);
        assert_eq!(
            seen,
            [
                (kind::HEADERS, flag::END_STREAM, 10),
                (kind::CONTINUATION, 0, 10),
                (kind::CONTINUATION, flag::END_HEADERS, 5)
            ]
        );
        let mut one = Vec::new();
        header_block(&mut one, 1, b"ab", false, 10);
        assert_eq!(one, [0, 0, 2, 1, flag::END_HEADERS, 0, 0, 0, 1, b'a', b'b']);
    }
}
