//! The static table (RFC 7541 Appendix A) and the decoder's dynamic table (§2.3, §4).

use std::collections::VecDeque;

/// What RFC 7541 §4.1 adds to an entry's name and value lengths when sizing the table (and,
/// in HTTP/2, a header list): a rough cost of keeping an entry.
pub(super) const ENTRY_OVERHEAD: usize = 32;

/// Entries 1 to 61, which every HPACK peer knows without sending them.
pub(super) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Where the name of a new dynamic entry comes from.
#[derive(Clone, Copy)]
pub(super) enum NameRef<'a> {
    /// The name of the static or dynamic entry at this index (already checked to exist).
    Index(usize),
    /// A literal name.
    Bytes(&'a [u8]),
}

/// One dynamic entry: its name and value lie back to back in `Table::bytes` from `offset`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: usize,
    name_len: usize,
    value_len: usize,
}

impl Entry {
    fn size(&self) -> usize {
        self.name_len + self.value_len + ENTRY_OVERHEAD
    }
}

/// The static table followed by the dynamic one, as the decoder indexes them.
///
/// Entry bytes live in one buffer, oldest first. Evicting only moves `Entry` bookkeeping; the
/// bytes of evicted entries are dropped from the front of the buffer only when it is full, and
/// the buffer is then kept at least twice its live size, so moving bytes costs O(1) per byte
/// inserted. Once the buffer and the entry list have grown to fit the table, inserting
/// allocates nothing.
#[derive(Debug)]
pub(super) struct Table {
    bytes: Vec<u8>,
    /// Newest first, so dynamic index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// RFC 7541 §4.1 size of the entries.
    size: usize,
    /// The limit set by the last size update (or the initial one).
    max_size: usize,
}

impl Table {
    pub(super) fn new(max_size: usize) -> Self {
        Table {
            bytes: Vec::new(),
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    pub(super) fn size(&self) -> usize {
        self.size
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The (name, value) at `index`: 1 to 61 static, then dynamic, newest first.
    #[inline]
    pub(super) fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC.get(i)) {
            return Some((name, value));
        }
        let entry = self.entries.get(index.checked_sub(STATIC.len() + 1)?)?;
        let name_end = entry.offset + entry.name_len;
        Some((
            &self.bytes[entry.offset..name_end],
            &self.bytes[name_end..name_end + entry.value_len],
        ))
    }

    /// Applies a dynamic table size update, evicting what no longer fits.
    pub(super) fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
        if self.entries.is_empty() {
            self.bytes.clear();
        }
    }

    /// Adds an entry in front, evicting the oldest ones to make room. An entry larger than the
    /// whole table empties it and is not added (RFC 7541 §4.4): not an error.
    pub(super) fn insert(&mut self, name: NameRef<'_>, value: &[u8]) {
        // Where the name is, before eviction can drop its entry: it may be one of those the
        // new entry pushes out, and its bytes stay readable until the buffer is compacted.
        let (name_static, mut name_at, name_len) = match name {
            NameRef::Index(index) if index <= STATIC.len() => {
                let name = STATIC[index - 1].0;
                (name, None, name.len())
            }
            NameRef::Index(index) => {
                let entry = self.entries[index - STATIC.len() - 1];
                (&[][..], Some(entry.offset), entry.name_len)
            }
            NameRef::Bytes(name) => (name, None, name.len()),
        };
        let entry_size = name_len + value.len() + ENTRY_OVERHEAD;
        if entry_size > self.max_size {
            self.entries.clear();
            self.bytes.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - entry_size);

        let added = name_len + value.len();
        if self.bytes.len() + added > self.bytes.capacity() {
            let live = self.entries.back().map_or(self.bytes.len(), |e| e.offset);
            let keep = name_at.map_or(live, |at| at.min(live));
            if keep > 0 {
                self.bytes.drain(..keep);
                for entry in &mut self.entries {
                    entry.offset -= keep;
                }
                name_at = name_at.map(|at| at - keep);
                let want = 2 * (self.bytes.len() + added);
                self.bytes.reserve(want.saturating_sub(self.bytes.len()));
            }
        }
        let offset = self.bytes.len();
        match name_at {
            Some(at) => self.bytes.extend_from_within(at..at + name_len),
            None => self.bytes.extend_from_slice(name_static),
        }
        self.bytes.extend_from_slice(value);
        self.entries.push_front(Entry {
            offset,
            name_len,
            value_len: value.len(),
        });
        self.size += entry_size;
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some(oldest) = self.entries.pop_back() else {
                break;
            };
            self.size -= oldest.size();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(table: &Table) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..table.len())
            .map(|i| {
                let (n, v) = table.get(62 + i).unwrap();
                (n.to_vec(), v.to_vec())
            })
            .collect()
    }

    #[test]
    fn static_entries_and_bounds() {
        let table = Table::new(4096);
        assert_eq!(table.get(0), None);
        assert_eq!(table.get(1), Some((&b":authority"[..], &b""[..])));
        assert_eq!(table.get(2), Some((&b":method"[..], &b"GET"[..])));
        assert_eq!(
            table.get(16),
            Some((&b"accept-encoding"[..], &b"gzip, deflate"[..]))
        );
        assert_eq!(table.get(61), Some((&b"www-authenticate"[..], &b""[..])));
        assert_eq!(table.get(62), None);
        assert_eq!(table.get(usize::MAX), None);
    }

    #[test]
    fn eviction_keeps_the_newest_entries() {
        // Each entry is 1 + 1 + 32 = 34 bytes: three fit in 102, not four.
        let mut table = Table::new(102);
        for name in [b"a", b"b", b"c", b"d"] {
            table.insert(NameRef::Bytes(name), b"v");
        }
        assert_eq!(table.size(), 102);
        let names: Vec<_> = entries(&table).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, [b"d".to_vec(), b"c".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn a_name_from_the_entry_being_evicted_survives() {
        // The only entry fills the table; a new one naming it must evict it, yet keep its
        // name (RFC 7541 §4.4).
        let mut table = Table::new(40);
        table.insert(NameRef::Bytes(b"name"), b"1234");
        assert_eq!(table.size(), 40);
        table.insert(NameRef::Index(62), b"5678");
        assert_eq!(entries(&table), [(b"name".to_vec(), b"5678".to_vec())]);
        // Many rounds, so the buffer is compacted while the name sits in an evicted entry.
        for i in 0..1000u32 {
            let value = format!("{:04}", i % 10_000);
            table.insert(NameRef::Index(62), value.as_bytes());
            assert_eq!(entries(&table), [(b"name".to_vec(), value.into_bytes())]);
        }
        assert!(
            table.bytes.capacity() <= 4 * 40,
            "{}",
            table.bytes.capacity()
        );
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut table = Table::new(64);
        table.insert(NameRef::Bytes(b"a"), b"b");
        table.insert(NameRef::Bytes(b"n"), &[b'x'; 32]);
        assert_eq!((table.len(), table.size()), (0, 0));
        // Exactly the table size fits.
        table.insert(NameRef::Bytes(b"n"), &[b'x'; 31]);
        assert_eq!((table.len(), table.size()), (1, 64));
    }

    #[test]
    fn the_buffer_stays_bounded_under_churn() {
        let mut table = Table::new(4096);
        let mut seed = 1u32;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = (seed >> 16) as usize % 300;
            let value = vec![b'v'; len];
            let index = 62 + (seed as usize >> 8) % (table.len() + 1);
            if index < 62 + table.len() && seed & 3 == 0 {
                table.insert(NameRef::Index(index), &value);
            } else {
                table.insert(NameRef::Bytes(b"x-name"), &value);
            }
            assert!(table.size() <= 4096);
            let live: usize = entries(&table)
                .iter()
                .map(|(n, v)| n.len() + v.len() + 32)
                .sum();
            assert_eq!(live, table.size());
        }
        assert!(
            table.bytes.capacity() <= 4 * 4096,
            "{}",
            table.bytes.capacity()
        );
    }

    #[test]
    fn shrinking_evicts_and_zero_empties() {
        let mut table = Table::new(4096);
        table.insert(NameRef::Index(1), b"www.example.com");
        table.insert(NameRef::Index(24), b"no-cache");
        assert_eq!(table.size(), 57 + 53);
        table.set_max_size(60);
        assert_eq!(
            entries(&table),
            [(b"cache-control".to_vec(), b"no-cache".to_vec())]
        );
        table.set_max_size(0);
        assert_eq!((table.len(), table.size()), (0, 0));
        table.insert(NameRef::Bytes(b"a"), b"b");
        assert_eq!(table.len(), 0);
    }
}
