//! HPACK (RFC 7541), the header compression of HTTP/2.
//!
//! The [`Decoder`] reads the header blocks a client sends: one per connection, because the
//! dynamic table it keeps must follow every block in order. It hands out each field as slices
//! of the block, of its own scratch buffers or of its table, so a request costs no allocation
//! once the connection has warmed up.
//!
//! The encoder ([`encode_status`], [`encode_field`]) writes response headers without ever
//! touching a dynamic table: every field is either a static-table index or a literal that the
//! peer must not index. That costs a few bytes per response but keeps no state, so the size
//! of the peer's table never matters and responses can be encoded on any thread in any order.

mod decoder;
mod encoder;
mod huffman;
mod integer;
mod table;
#[cfg(test)]
mod tests;

pub use decoder::Decoder;
pub use encoder::{encode_field, encode_status};

/// Why a header block cannot be decoded. Every one but `ListTooLarge` leaves the connection's
/// decoding state unusable (an HTTP/2 COMPRESSION_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The block ends in the middle of a field, an integer or a string.
    #[error("the header block ends in the middle of a field")]
    Truncated,
    /// An integer does not fit in 32 bits, or is spread over more bytes than that needs.
    #[error("an integer in the header block is too large")]
    IntegerOverflow,
    /// An index of 0, or one past the end of the static and dynamic tables.
    #[error("the header block refers to table index {0}, which does not exist")]
    BadIndex(usize),
    /// A Huffman-coded string holds the end-of-string symbol, which the RFC forbids.
    #[error("a Huffman-coded string contains the end-of-string symbol")]
    HuffmanEos,
    /// A Huffman-coded string ends with more than 7 bits of padding, or padding that is not
    /// all ones.
    #[error("a Huffman-coded string has invalid padding")]
    HuffmanPadding,
    /// A dynamic table size update asks for more than the size we advertised.
    #[error("a dynamic table size update asks for {0} bytes, more than we allow")]
    TableSizeTooLarge(usize),
    /// A dynamic table size update comes after a field; it may only open a block.
    #[error("a dynamic table size update comes after the first field of the block")]
    LateTableSizeUpdate,
    /// The decoded fields add up to more than the caller's limit. The block was still decoded
    /// to the end, so the connection can carry on.
    #[error("the header list is larger than allowed")]
    ListTooLarge,
}

/// One decoded field, borrowed from the block or the decoder until the callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field name, as sent (HPACK does not check case or characters).
    pub name: &'a [u8],
    /// The field value, as sent.
    pub value: &'a [u8],
    /// Sent as never-indexed: whoever forwards it must not let a compressor index it either.
    pub sensitive: bool,
}
