//! Decoding header blocks (RFC 7541 §3, §6).

use super::table::{NameRef, Table, ENTRY_OVERHEAD};
use super::{huffman, integer, DecodeError, Field};

/// The HPACK state of one connection's incoming header blocks: the dynamic table, which each
/// block may change, and scratch space for Huffman-coded strings, kept to be reused.
#[derive(Debug)]
pub struct Decoder {
    pub(super) table: Table,
    /// The SETTINGS_HEADER_TABLE_SIZE we advertise: the most a size update may ask for.
    max_table_size: usize,
    /// Decoded Huffman names and values; both may be needed at once.
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we advertise (4096 usually); a table
    /// size update above it is an error. The table starts at this size.
    pub fn new(max_table_size: usize) -> Self {
        Decoder {
            table: Table::new(max_table_size),
            max_table_size,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads already joined),
    /// calling `field` for each field in order.
    ///
    /// `max_list_size`: the RFC 7541 §4.1 size (name + value + 32 per field) past which
    /// `field` is no longer called; the rest of the block is still decoded so the dynamic
    /// table stays in step, and then `Err(DecodeError::ListTooLarge)` is returned.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list_size: usize,
        mut field: impl FnMut(Field<'_>),
    ) -> Result<(), DecodeError> {
        let mut list_size = 0usize;
        let mut emit = |name: &[u8], value: &[u8], sensitive: bool| {
            list_size = list_size.saturating_add(name.len() + value.len() + ENTRY_OVERHEAD);
            if list_size <= max_list_size {
                field(Field {
                    name,
                    value,
                    sensitive,
                });
            }
        };
        let mut pos = 0;
        // Size updates may only open a block (RFC 7541 §4.2), several in a row.
        let mut at_start = true;
        while let Some(&first) = block.get(pos) {
            // The representation is told by the number of leading zero bits (§6).
            match first.leading_zeros() {
                // 1xxxxxxx: indexed field.
                0 => {
                    let index = integer::decode(block, &mut pos, 7)?;
                    let (name, value) =
                        self.table.get(index).ok_or(DecodeError::BadIndex(index))?;
                    emit(name, value, false);
                }
                // 001xxxxx: dynamic table size update.
                2 => {
                    if !at_start {
                        return Err(DecodeError::LateTableSizeUpdate);
                    }
                    let size = integer::decode(block, &mut pos, 5)?;
                    if size > self.max_table_size {
                        return Err(DecodeError::TableSizeTooLarge(size));
                    }
                    self.table.set_max_size(size);
                    continue;
                }
                // 01xxxxxx: literal with incremental indexing; 0001xxxx: never indexed;
                // 0000xxxx: without indexing.
                zeros => {
                    let indexing = zeros == 1;
                    let index = integer::decode(block, &mut pos, if indexing { 6 } else { 4 })?;
                    let literal_name = match index {
                        0 => Some(read_string(block, &mut pos, &mut self.name_buf)?),
                        _ => None,
                    };
                    let value = read_string(block, &mut pos, &mut self.value_buf)?;
                    let name = match literal_name {
                        Some(name) => name,
                        None => self.table.get(index).ok_or(DecodeError::BadIndex(index))?.0,
                    };
                    emit(name, value, zeros == 3);
                    if indexing {
                        let name = literal_name.map_or(NameRef::Index(index), NameRef::Bytes);
                        self.table.insert(name, value);
                    }
                }
            }
            at_start = false;
        }
        if list_size > max_list_size {
            return Err(DecodeError::ListTooLarge);
        }
        Ok(())
    }

    /// Current dynamic table size in bytes (RFC 7541 §4.1): for tests.
    pub fn table_size(&self) -> usize {
        self.table.size()
    }

    /// Current number of dynamic table entries: for tests.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }
}

/// Reads a string literal (§5.2) at `block[*pos]`: a slice of the block when plain, of
/// `scratch` when Huffman-coded.
#[inline]
fn read_string<'a>(
    block: &'a [u8],
    pos: &mut usize,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], DecodeError> {
    let huffman = block.get(*pos).is_some_and(|b| b & 0x80 != 0);
    let len = integer::decode(block, pos, 7)?;
    let start = *pos;
    if block.len() - start < len {
        return Err(DecodeError::Truncated);
    }
    *pos = start + len;
    let raw = &block[start..start + len];
    if !huffman {
        return Ok(raw);
    }
    huffman::decode(raw, scratch)?;
    Ok(scratch)
}
