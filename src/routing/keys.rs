//! A client's key in a request, and its stable hash: what sticky canaries place a client by and
//! what consistent hashing picks an endpoint by. Nothing here allocates.

use http::header::COOKIE;
use http::request::Parts;

/// The value of cookie `name`, from every `Cookie` field (HTTP/2 clients may send several).
pub fn cookie<'a>(req: &'a Parts, name: &str) -> Option<&'a [u8]> {
    req.headers.get_all(COOKIE).iter().find_map(|field| {
        field.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = split_once(pair, b'=')?;
            (k.trim_ascii() == name.as_bytes()).then(|| v.trim_ascii())
        })
    })
}

/// The raw value of query parameter `name` (the first one).
pub fn query<'a>(req: &'a Parts, name: &str) -> Option<&'a [u8]> {
    req.uri
        .query()?
        .as_bytes()
        .split(|&b| b == b'&')
        .find_map(|pair| {
            let (k, v) = split_once(pair, b'=').unwrap_or((pair, b""));
            (k == name.as_bytes()).then_some(v)
        })
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

/// A key's hash: FNV-1a over its bytes, then [`mix64`] so that every bit of the key reaches
/// the high bits. Fixed here, never taken from the standard library (whose hasher may change
/// between Rust versions), so that every replica and every version of the gateway agrees on
/// where a key goes.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// A 64-bit finalizer (MurmurHash3's): a bijection under which each input bit flips about half
/// of the output bits.
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn cookies_and_query_parameters_are_found_by_exact_name() {
        let r = req(
            "/a?xid=1&id=42&id=43",
            &[("cookie", "a=1; sg=17"), ("cookie", "sgx=9; other= 3 ")],
        );
        assert_eq!(cookie(&r, "sg"), Some(&b"17"[..]));
        assert_eq!(cookie(&r, "other"), Some(&b"3"[..]));
        assert_eq!(cookie(&r, "s"), None);
        assert_eq!(query(&r, "id"), Some(&b"42"[..]));
        assert_eq!(query(&r, "x"), None);
    }

    #[test]
    fn key_hashes_are_pinned() {
        // A change here would move every hashed client of every deployment.
        assert_eq!(
            [key_hash(b""), key_hash(b"user-1"), key_hash(b"user-2")],
            [
                0xefd0_1f60_ba99_2926,
                0x41a2_fca5_c684_01c5,
                0xa9f4_ad0c_2263_143b
            ]
        );
    }
}
