//! Header rules for forwarding (SPEC §3): hop-by-hop headers, x-forwarded-*, x-request-id, Host.

use super::error::ProxyError;
use crate::upstream::h1::Added;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Uri;
use http::{Method, Version};
use rand::RngCore;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), dropped both ways.
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Fields that `Connection` may not name away (RFC 9110 §7.6.1: it lists hop-by-hop fields only).
/// Host is end-to-end and the upstream routes by it. The framing fields and TE have their own
/// rules here and in the HTTP/1.1 writer; a client naming them must not change what the upstream
/// is sent.
const NEVER_NAMED: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
];

/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Per-connection facts, computed once at accept.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's IP, ready to append to x-forwarded-for.
    pub client_ip: HeaderValue,
    /// `http` or `https`.
    pub proto: HeaderValue,
    /// The listener's stream idle timeout; `None`: no limit.
    pub stream_idle: Option<std::time::Duration>,
    /// The address the client connected to: the Host of an HTTP/1.0 request that sent none.
    pub local: Option<std::net::SocketAddr>,
}

/// Whether the request asks for a protocol upgrade (websocket) that we pass through.
pub fn is_upgrade(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && has_token(&parts.headers, "upgrade")
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| crate::http1::head::has_token(v.as_bytes(), token.as_bytes()))
}

/// Fields the request writer looks for once, in one pass over the names ([`scan`]): the
/// hop-by-hop ones (bits 0 to 6, in [`HOP_BY_HOP`]'s order), then these.
const EXPECT_BIT: u16 = 1 << 7;
const FORWARDED_FOR_BIT: u16 = 1 << 8;
const FORWARDED_PROTO_BIT: u16 = 1 << 9;
const FORWARDED_HOST_BIT: u16 = 1 << 10;
const REQUEST_ID_BIT: u16 = 1 << 11;
const HOP_BY_HOP_COUNT: usize = 7;
const HOP_BY_HOP_BITS: u16 = (1 << HOP_BY_HOP_COUNT) - 1;

/// Which of [`HOP_BY_HOP`] and the forwarding fields `headers` holds, as bits: one pass over its
/// names costs less than a hashed lookup for each.
fn scan(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == header::EXPECT {
            present |= EXPECT_BIT;
        } else if k == X_FORWARDED_FOR {
            present |= FORWARDED_FOR_BIT;
        } else if k == X_FORWARDED_PROTO {
            present |= FORWARDED_PROTO_BIT;
        } else if k == X_FORWARDED_HOST {
            present |= FORWARDED_HOST_BIT;
        } else if k == X_REQUEST_ID {
            present |= REQUEST_ID_BIT;
        }
    }
    present
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = scan(headers);
    strip_present(headers, present);
}

/// [`strip_hop_by_hop`] given what [`scan`] found. Whether it removed fields `Connection`
/// named, which may have been any of the others `scan` looks for.
fn strip_present(headers: &mut HeaderMap, present: u16) -> bool {
    // Most messages carry no hop-by-hop field, or only `Connection: keep-alive`, so only those
    // there are removed by hashed lookup.
    if present & HOP_BY_HOP_BITS == 0 {
        return false;
    }
    let mut named_any = false;
    // Custom headers that Connection names are hop-by-hop too. Its usual tokens name no header.
    if present & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let token = token.trim();
            let usual = ["keep-alive", "close", "upgrade"]
                .iter()
                .any(|u| token.eq_ignore_ascii_case(u));
            if !usual && !token.is_empty() {
                // `from_bytes` lowercases as it parses.
                let name = HeaderName::from_bytes(token.as_bytes()).ok();
                named.extend(name.filter(|n| !NEVER_NAMED.contains(n)));
            }
        }
        for n in named {
            named_any |= headers.remove(n).is_some();
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0 || (*h == header::TE && is_te_trailers(headers)) {
            continue;
        }
        headers.remove(h);
    }
    named_any
}

fn is_te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// Refuses what the gateway does not forward, before routing, then settles the Host (see
/// [`settle_host`]).
pub fn check_request(parts: &mut Parts) -> Result<(), ProxyError> {
    // A reverse proxy: a CONNECT target names no route's upstream, and a tunnel is not a request.
    if parts.method == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    if !only_chunked(&parts.headers) {
        return Err(ProxyError::UnsupportedTransferCoding);
    }
    settle_host(parts)
}

/// Whether the request's transfer codings, over all its `transfer-encoding` fields, are none or
/// one `chunked`. The listener decodes chunked and refuses a list that does not end with it;
/// another coding before it (`gzip, chunked`) would reach the upstream re-framed as plain
/// chunked, its coding lost, so it is refused rather than forwarded.
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(c), None) => c.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// Leaves the request with the one Host it is routed and forwarded by (RFC 9112 §3.2). A target
/// in absolute form, and HTTP/2's `:authority`, name the host: it replaces any Host header
/// (§3.2.2), which an HTTP/1.1 upstream needs. Otherwise an HTTP/1.1 request needs exactly one
/// Host header; HTTP/1.0 may send none.
///
/// The host must be `host[:port]` (RFC 9110 §7.2): one the upstream reads as the gateway did.
/// Userinfo (`user@`) is refused rather than dropped, as RFC 9110 §4.2.4 asks, since it mostly
/// serves to disguise the host.
pub fn settle_host(parts: &mut Parts) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    let Some(authority) = parts.uri.authority() else {
        return match (first, second) {
            (Some(h), None) if is_host(h.as_bytes()) => Ok(()),
            (Some(_), None) => Err(ProxyError::InvalidHost),
            (Some(_), Some(_)) => Err(ProxyError::DuplicateHost),
            (None, _) if parts.version == Version::HTTP_11 => Err(ProxyError::MissingHost),
            (None, _) => Ok(()),
        };
    };
    let host = authority.as_str();
    if !is_host(host.as_bytes()) {
        return Err(ProxyError::InvalidHost);
    }
    if second.is_some() || first.is_none_or(|f| f.as_bytes() != host.as_bytes()) {
        // Never fails: the characters a URI allows are all valid in a header value.
        let value = HeaderValue::from_str(host).map_err(|_| ProxyError::MissingHost)?;
        parts.headers.insert(header::HOST, value);
    }
    Ok(())
}

/// Whether `host` is `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a bracketed IP
/// literal, or a reg-name (which covers IPv4 addresses and DNS names), then an optional port of
/// digits. An empty Host is allowed, as RFC 9112 §3.2 allows it.
fn is_host(host: &[u8]) -> bool {
    let port = |rest: &[u8]| match rest.split_first() {
        None => true,
        Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if let Some(literal) = host.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        return end > 0
            && literal[..end]
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            && port(&literal[end + 1..]);
    }
    // A reg-name: unreserved characters, sub-delims and percent-encoded octets, in one pass up
    // to the port's colon (which a reg-name does not hold).
    let mut i = 0;
    while let Some(&b) = host.get(i) {
        if REG_NAME[usize::from(b)] {
            i += 1;
        } else if b == b'%' {
            let hex = host.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else {
            return port(&host[i..]);
        }
    }
    true
}

/// The bytes a reg-name holds besides `%` escapes: unreserved and sub-delims (RFC 3986 §3.2.2).
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'('
            )
            || matches!(c, b')' | b'*' | b'+' | b',' | b';' | b'=');
        b += 1;
    }
    t
};

/// Rewrites a downstream request head into the one sent upstream over HTTP/1.1.
pub fn prepare_request(parts: &mut Parts, conn: &ConnInfo, upgrade: bool) {
    prepare_request_kept(parts, conn, upgrade).into_map(&mut parts.headers);
}

/// [`prepare_request`], except that the forwarding fields the head did not have are returned
/// rather than put into its header map: written after the head's own fields
/// ([`Forwarded::added`]), they reach an HTTP/1.1 upstream as the same bytes, without the cost
/// of four map inserts. Fields the client sent are replaced in the map, in place.
pub fn prepare_request_kept(parts: &mut Parts, conn: &ConnInfo, upgrade: bool) -> Forwarded {
    let upgrade_value = if upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let mut present = scan(&parts.headers);
    if strip_present(&mut parts.headers, present) {
        // `Connection` named fields away, perhaps one of the forwarding fields.
        present = scan(&parts.headers);
    }
    if let Some(u) = upgrade_value {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u);
    }
    // The gateway answers 100-continue itself when it starts reading the body.
    if present & EXPECT_BIT != 0 {
        parts.headers.remove(header::EXPECT);
    }

    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let origin = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = Uri::from(origin);
    }
    parts.version = Version::HTTP_11;

    let headers = &mut parts.headers;
    let mut added = Forwarded::default();
    if present & FORWARDED_FOR_BIT != 0 {
        append_forwarded_for(headers, &conn.client_ip);
    } else {
        added.for_ = Some(conn.client_ip.clone());
    }
    if present & FORWARDED_PROTO_BIT != 0 {
        headers.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
    } else {
        added.proto = Some(conn.proto.clone());
    }
    match headers.get(header::HOST).cloned() {
        Some(host) if present & FORWARDED_HOST_BIT != 0 => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        Some(host) => added.host = Some(host),
        // HTTP/1.0 without Host, routed by no name: the upstream hears HTTP/1.1, which needs
        // one (RFC 9112 §3.2), so it gets the authority the client reached, the listener's.
        // The fields held so far go in first, so that the order is the map's either way.
        None => {
            if let Some(host) = conn.local.and_then(listener_authority) {
                std::mem::take(&mut added).into_map(headers);
                headers.insert(header::HOST, host);
            }
        }
    }
    if present & REQUEST_ID_BIT == 0 {
        added.request_id = Some(new_request_id_text());
    }
    added
}

/// The forwarding fields a request gets that its head did not have: `x-forwarded-for`,
/// `x-forwarded-proto`, `x-forwarded-host` and `x-request-id`, in that order.
#[derive(Debug, Default)]
pub struct Forwarded {
    for_: Option<HeaderValue>,
    proto: Option<HeaderValue>,
    host: Option<HeaderValue>,
    request_id: Option<[u8; 36]>,
}

impl Forwarded {
    /// The fields as the HTTP/1.1 request writer takes them, after the head's own.
    pub fn added(&self) -> Added<'_> {
        let mut added = Added::default();
        if let Some(v) = &self.for_ {
            added.push(X_FORWARDED_FOR.as_str(), v.as_bytes());
        }
        if let Some(v) = &self.proto {
            added.push(X_FORWARDED_PROTO.as_str(), v.as_bytes());
        }
        if let Some(v) = &self.host {
            added.push(X_FORWARDED_HOST.as_str(), v.as_bytes());
        }
        if let Some(id) = &self.request_id {
            added.push(X_REQUEST_ID.as_str(), id);
        }
        added
    }

    /// Puts the fields into the head's map, where a rule, a hash policy, a mirror or an
    /// HTTP/2 upstream reads them; appended, as a map insert of a new name is.
    pub fn into_map(self, headers: &mut HeaderMap) {
        if let Some(v) = self.for_ {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        if let Some(v) = self.proto {
            headers.insert(X_FORWARDED_PROTO.clone(), v);
        }
        if let Some(v) = self.host {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
        if let Some(id) = self.request_id {
            headers.insert(X_REQUEST_ID.clone(), request_id_value(&id));
        }
    }
}

/// `ip:port` (`[v6]:port`) as a Host value; only for the rare request that sent none.
fn listener_authority(addr: std::net::SocketAddr) -> Option<HeaderValue> {
    HeaderValue::from_str(&addr.to_string()).ok()
}

fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    let joined = match headers.get(&X_FORWARDED_FOR) {
        None => None,
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
    };
    headers.insert(
        X_FORWARDED_FOR.clone(),
        joined.unwrap_or_else(|| client_ip.clone()),
    );
}

/// A random UUID (version 4) as a header value.
pub fn new_request_id() -> HeaderValue {
    request_id_value(&new_request_id_text())
}

fn request_id_value(id: &[u8; 36]) -> HeaderValue {
    HeaderValue::from_bytes(id).expect("hex and dashes are valid header bytes")
}

/// A random UUID (version 4) as text.
fn new_request_id_text() -> [u8; 36] {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_text(bytes)
}

/// 16 bytes as a UUID's text: lowercase hex in groups of 8-4-4-4-12 digits.
fn uuid_text(bytes: [u8; 16]) -> [u8; 36] {
    let mut out = [b'-'; 36];
    // The 8-4-4-4-12 groups: where each starts in `out`, and its bytes.
    let groups: [(usize, &[u8]); 5] = [
        (0, &bytes[..4]),
        (9, &bytes[4..6]),
        (14, &bytes[6..8]),
        (19, &bytes[8..10]),
        (24, &bytes[10..]),
    ];
    for (at, group) in groups {
        for (pair, &b) in out[at..].chunks_exact_mut(2).zip(group) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
    }
    out
}

/// Each byte as two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [HEX[b >> 4], HEX[b & 0xf]];
        b += 1;
    }
    t
};

/// Rewrites an upstream response head for the client. A 101 keeps its upgrade headers.
pub fn prepare_response(headers: &mut HeaderMap, switching: bool) {
    if switching {
        return;
    }
    strip_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::h1::{encode_head, ReqFraming};

    /// The head written upstream both ways: forwarding fields put into the map, and kept out
    /// of it as text; each `x-request-id` value drawn is masked.
    fn written_both_ways(head: &[u8]) -> (String, String) {
        let conn = ConnInfo {
            local: Some("127.0.0.1:8080".parse().unwrap()),
            ..conn()
        };
        let parts = crate::fuzzing::request_parts(head).expect("a valid head");
        let (mut mapped, mut kept) = (parts.clone(), parts);
        prepare_request(&mut mapped, &conn, false);
        let forwarded = prepare_request_kept(&mut kept, &conn, false);
        let mut out = [Vec::new(), Vec::new()];
        encode_head(&mut out[0], &mapped, &Added::default(), ReqFraming::None);
        encode_head(&mut out[1], &kept, &forwarded.added(), ReqFraming::None);
        let [a, b] = out.map(|o| {
            String::from_utf8(o)
                .unwrap()
                .lines()
                .map(|l| match l.split_once(": ") {
                    Some(("x-request-id", v)) if v.len() == 36 => "x-request-id: *",
                    _ => l,
                })
                .collect::<Vec<_>>()
                .join("\n")
        });
        (a, b)
    }

    #[test]
    fn forwarding_fields_kept_as_text_are_the_bytes_the_map_gives() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n",
                "GET / HTTP/1.1\nhost: a\nuser-agent: t\nx-forwarded-for: 10.1.2.3\n\
                 x-forwarded-proto: http\nx-forwarded-host: a\nx-request-id: *\n",
            ),
            // Sent by the client: replaced (the proto, the host) or kept (the id) in place.
            (
                b"GET / HTTP/1.1\r\nX-Forwarded-Proto: https\r\nHost: a\r\n\
                  X-Request-Id: 0\r\nX-Forwarded-Host: b\r\nX-Forwarded-Host: c\r\n\
                  X-Forwarded-For: 192.0.2.9\r\nExpect: 100-continue\r\n\r\n",
                "GET / HTTP/1.1\nx-forwarded-proto: http\nhost: a\nx-request-id: 0\n\
                 x-forwarded-host: a\nx-forwarded-for: 192.0.2.9, 10.1.2.3\n",
            ),
            // Named away by Connection: then added, as if never sent.
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for, X-Request-Id\r\n\
                  X-Forwarded-For: 192.0.2.9\r\nx-request-id: 0\r\n\r\n",
                "GET / HTTP/1.1\nhost: a\nx-forwarded-for: 10.1.2.3\n\
                 x-forwarded-proto: http\nx-forwarded-host: a\nx-request-id: *\n",
            ),
            // HTTP/1.0 without Host gets the listener's, and no x-forwarded-host.
            (
                b"GET / HTTP/1.0\r\n\r\n",
                "GET / HTTP/1.1\nx-forwarded-for: 10.1.2.3\nx-forwarded-proto: http\n\
                 host: 127.0.0.1:8080\nx-request-id: *\n",
            ),
            (
                b"GET / HTTP/1.0\r\nX-Forwarded-For: 192.0.2.9\r\n\r\n",
                "GET / HTTP/1.1\nx-forwarded-for: 192.0.2.9, 10.1.2.3\n\
                 x-forwarded-proto: http\nhost: 127.0.0.1:8080\nx-request-id: *\n",
            ),
        ];
        for (head, want) in cases {
            let (mapped, kept) = written_both_ways(head);
            assert_eq!(mapped, want, "{}", String::from_utf8_lossy(head));
            assert_eq!(kept, want, "{}", String::from_utf8_lossy(head));
        }
    }

    fn conn() -> ConnInfo {
        ConnInfo {
            client_ip: HeaderValue::from_static("10.1.2.3"),
            proto: HeaderValue::from_static("http"),
            stream_idle: None,
            local: None,
        }
    }

    #[test]
    fn request_rules() {
        let req = http::Request::builder()
            .uri("/a?b=c")
            .header("host", "shop.example.com")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-forwarded-for", "192.0.2.1")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        prepare_request(&mut parts, &conn(), false);
        let h = &parts.headers;
        assert!(
            h.get("connection").is_none()
                && h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example.com");
        assert_eq!(h["host"], "shop.example.com");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-request-id"].len(), 36);
        assert_eq!(parts.uri, "/a?b=c");
    }

    #[test]
    fn connection_tokens_name_headers_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Keep-Alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        prepare_response(&mut h, false);
        assert!(
            h.get("connection").is_none() && h.get("x-secret").is_none(),
            "{h:?}"
        );
        assert_eq!(h["content-type"], "text/plain");
        let mut plain = HeaderMap::new();
        plain.insert("content-length", HeaderValue::from_static("3"));
        prepare_response(&mut plain, false);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn connection_cannot_name_host_or_framing_fields_away() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Host, Content-Length, TE, x-a"),
        );
        h.insert("host", HeaderValue::from_static("a.example"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-a", HeaderValue::from_static("1"));
        prepare_response(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "host", "te"]);
    }

    #[test]
    fn http2_authority_becomes_host() {
        let req = http::Request::builder()
            .version(Version::HTTP_2)
            .uri("http://api.example.com/x?y=1")
            .header("x-request-id", "keep-me")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        settle_host(&mut parts).unwrap();
        prepare_request(&mut parts, &conn(), false);
        assert_eq!(parts.uri, "/x?y=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "api.example.com");
        assert_eq!(parts.headers["x-request-id"], "keep-me");
    }

    fn settled(version: Version, uri: &str, hosts: &[&str]) -> Result<Vec<String>, ProxyError> {
        let mut req = http::Request::builder().version(version).uri(uri);
        for h in hosts {
            req = req.header("host", *h);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        settle_host(&mut parts)?;
        Ok(parts
            .headers
            .get_all("host")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect())
    }

    #[test]
    fn the_target_authority_replaces_host() {
        let v11 = Version::HTTP_11;
        let abs = "http://other.example:8081/p?q=1";
        assert_eq!(settled(v11, abs, &["a"]).unwrap(), ["other.example:8081"]);
        assert_eq!(
            settled(v11, abs, &["a", "b"]).unwrap(),
            ["other.example:8081"]
        );
        assert_eq!(settled(v11, abs, &[]).unwrap(), ["other.example:8081"]);
        let userinfo = "http://user:pw@other.example/p";
        assert!(matches!(
            settled(v11, userinfo, &[]),
            Err(ProxyError::InvalidHost)
        ));
        let h2 = "https://api.example.com/x";
        assert_eq!(
            settled(Version::HTTP_2, h2, &["evil.example"]).unwrap(),
            ["api.example.com"]
        );
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(settled(Version::HTTP_11, "/", &["a"]).unwrap(), ["a"]);
        assert!(matches!(
            settled(Version::HTTP_11, "/", &[]),
            Err(ProxyError::MissingHost)
        ));
        assert!(matches!(
            settled(Version::HTTP_11, "/", &["a", "b"]),
            Err(ProxyError::DuplicateHost)
        ));
        assert!(matches!(
            settled(Version::HTTP_10, "/", &["a", "a"]),
            Err(ProxyError::DuplicateHost)
        ));
        assert!(settled(Version::HTTP_10, "/", &[]).unwrap().is_empty());
        assert!(settled(Version::HTTP_2, "/", &[]).unwrap().is_empty());
    }

    #[test]
    fn hosts_are_host_and_optional_port() {
        for good in [
            "a",
            "shop.example.com",
            "shop.example.com:8080",
            "10.0.0.7:9080",
            "[::1]:8080",
            "[2001:db8::7]",
            "xn--bcher-kva.example",
            "a%2Db",
            "%41:80",
            "a:",
            "[::1]:",
            "",
        ] {
            assert!(is_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "a b",
            "user@a",
            "user:pw@a:80",
            "a/b",
            "a?b",
            "a#b",
            "a\\b",
            "a:80x",
            "a:8:0",
            "[::1",
            "[]",
            "[::1]x",
            "a%2",
            "a%3:80",
            "a%zz",
            "\u{e9}.example",
            "a\tb",
        ] {
            assert!(!is_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn transfer_codings_other_than_one_chunked_are_refused() {
        let check = |values: &[&str]| {
            let mut req = http::Request::post("/").header("host", "a");
            for v in values {
                req = req.header("transfer-encoding", *v);
            }
            let (mut parts, ()) = req.body(()).unwrap().into_parts();
            check_request(&mut parts)
        };
        assert!(check(&[]).is_ok());
        assert!(check(&["chunked"]).is_ok());
        assert!(check(&["Chunked"]).is_ok());
        for refused in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, chunked"],
            &["identity, chunked"],
        ] {
            assert!(
                matches!(check(refused), Err(ProxyError::UnsupportedTransferCoding)),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = new_request_id();
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36, "{s}");
        for (i, c) in s.bytes().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, b'-', "{s}");
            } else {
                assert!(matches!(c, b'0'..=b'9' | b'a'..=b'f'), "{s}");
            }
        }
        assert_eq!(s.as_bytes()[14], b'4', "{s}");
        assert!(matches!(s.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{s}");
        assert_ne!(a, new_request_id());
        let bytes = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128.to_be_bytes();
        assert_eq!(&uuid_text(bytes), b"01234567-89ab-cdef-fedc-ba9876543210");
    }
}
