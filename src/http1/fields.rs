//! A response head's fields as HTTP/1.1 text, so that an HTTP/1.1 upstream's answer can go to an
//! HTTP/1.1 client without a header map being built and dropped for it.

use bytes::Bytes;

/// The fields of a response head to pass on, written once as HTTP/1.1 lines (`name: value`
/// CRLF, names lowercased as a header map would have them), with what a server reads off them
/// to frame the body.
#[derive(Debug, Clone)]
pub struct Fields {
    text: Bytes,
    length: Option<u64>,
    dated: bool,
}

impl Fields {
    /// `text`: the lines, as described above. `length`: the `content-length` among them.
    /// `dated`: a `date` is among them.
    pub fn new(text: Bytes, length: Option<u64>, dated: bool) -> Self {
        Fields {
            text,
            length,
            dated,
        }
    }

    /// The lines, ready to write.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// The `content-length` among them.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether a `date` is among them.
    pub fn dated(&self) -> bool {
        self.dated
    }

    /// The fields, as (name, value): each line split at its first colon (names hold none).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.text.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].strip_prefix(b" ")?))
        })
    }
}

/// What a field means to the HTTP/1.1 code that reads heads, by its name in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `connection`.
    Connection,
    /// `keep-alive`.
    KeepAlive,
    /// `transfer-encoding`.
    TransferEncoding,
    /// `content-length`.
    ContentLength,
    /// `date`.
    Date,
    /// The other hop-by-hop fields: `proxy-connection`, `te`, `upgrade`, `proxy-authenticate`.
    OtherHop,
    /// Any other field.
    Other,
}

impl FieldKind {
    /// The kind of the field named `name`.
    pub fn of(name: &[u8]) -> FieldKind {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            2 if is("te") => FieldKind::OtherHop,
            4 if is("date") => FieldKind::Date,
            7 if is("upgrade") => FieldKind::OtherHop,
            10 if is("connection") => FieldKind::Connection,
            10 if is("keep-alive") => FieldKind::KeepAlive,
            14 if is("content-length") => FieldKind::ContentLength,
            16 if is("proxy-connection") => FieldKind::OtherHop,
            17 if is("transfer-encoding") => FieldKind::TransferEncoding,
            18 if is("proxy-authenticate") => FieldKind::OtherHop,
            _ => FieldKind::Other,
        }
    }
}

/// A response body that may carry its head's fields as text from an upstream.
pub trait WithFields {
    /// The fields, when the body has them: its response's header map then holds only the
    /// fields added to them, written after them.
    fn fields(&self) -> Option<&Fields>;
}

impl WithFields for http_body_util::Full<Bytes> {
    fn fields(&self) -> Option<&Fields> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_as_fields() {
        let f = Fields::new(
            Bytes::from_static(b"content-type: text/plain\r\nx-a: b: c\r\nx-e: \r\n"),
            None,
            false,
        );
        let got: Vec<_> = f.iter().collect();
        let want: [(&[u8], &[u8]); 3] = [
            (b"content-type", b"text/plain"),
            (b"x-a", b"b: c"),
            (b"x-e", b""),
        ];
        assert_eq!(got, want);
    }
}
