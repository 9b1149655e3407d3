//! What `encode_status` and `encode_field` write decodes back to the same fields; and a
//! micro-benchmark of the decoder.

use super::super::encoder::static_name_index;
use super::super::huffman::tests::encode as huffman_encode;
use super::super::integer;
use super::super::table::STATIC;
use super::*;

#[test]
fn static_name_lookup_matches_the_table() {
    for (i, &(name, _)) in STATIC.iter().enumerate() {
        let first = STATIC.iter().position(|&(n, _)| n == name).unwrap() + 1;
        assert_eq!(
            static_name_index(name),
            Some(first),
            "{}",
            String::from_utf8_lossy(name)
        );
        assert!(first <= i + 1);
    }
    for name in [
        "",
        "hos",
        "hosts",
        "Host",
        ":status ",
        "x-forwarded-for",
        "content-typf",
        "accept-encodinh",
    ] {
        assert_eq!(static_name_index(name.as_bytes()), None, "{name}");
    }
}

/// Encodes `fields` with `encode_field` and decodes them with a fresh decoder.
fn round_trip(fields: &[(Vec<u8>, Vec<u8>, bool)]) {
    let mut block = Vec::new();
    for (name, value, sensitive) in fields {
        encode_field(name, value, *sensitive, &mut block);
    }
    let mut decoder = Decoder::new(4096);
    let mut got = Vec::new();
    let result = decoder.decode(&block, usize::MAX, |f| {
        got.push((f.name.to_vec(), f.value.to_vec(), f.sensitive))
    });
    assert_eq!(result, Ok(()));
    assert_eq!(got, fields);
    assert_eq!(decoder.table_len(), 0, "the encoder must not index");
}

#[test]
fn every_static_name_round_trips() {
    let long = vec![b'v'; 300];
    for &(name, _) in &STATIC {
        for value in [&b""[..], b"value", &long[..127], &long] {
            for sensitive in [false, true] {
                round_trip(&[(name.to_vec(), value.to_vec(), sensitive)]);
                // The name goes by index: one byte for indexes up to 14, two above.
                let mut out = Vec::new();
                encode_field(name, value, sensitive, &mut out);
                let index_len = if static_name_index(name).unwrap() < 15 {
                    1
                } else {
                    2
                };
                let len_len = match value.len() {
                    0..127 => 1,
                    127..255 => 2,
                    _ => 3,
                };
                assert_eq!(out.len(), index_len + len_len + value.len());
                assert_eq!(out[0] & 0xf0, if sensitive { 0x10 } else { 0x00 });
            }
        }
    }
}

#[test]
fn other_names_round_trip() {
    let long_name = vec![b'n'; 200];
    let binary: Vec<u8> = (0..=255).collect();
    round_trip(&[
        (b"x-request-id".to_vec(), b"abc".to_vec(), false),
        (b"x-secret".to_vec(), b"hunter2".to_vec(), true),
        (b"".to_vec(), b"".to_vec(), false),
        (long_name.clone(), binary.clone(), true),
        (b"x-empty".to_vec(), Vec::new(), false),
        (binary, long_name, false),
    ]);
    let mut out = Vec::new();
    encode_field(b"x-a", b"b", false, &mut out);
    assert_eq!(out, [0x00, 0x03, b'x', b'-', b'a', 0x01, b'b']);
}

#[test]
fn statuses_round_trip() {
    for (code, byte) in [
        (200, 0x88),
        (204, 0x89),
        (206, 0x8a),
        (304, 0x8b),
        (400, 0x8c),
        (404, 0x8d),
        (500, 0x8e),
    ] {
        let mut out = Vec::new();
        encode_status(code, &mut out);
        assert_eq!(out, [byte], "{code}");
    }
    let mut out = Vec::new();
    encode_status(302, &mut out);
    assert_eq!(out, hex("0803 3330 32"));
    for code in (100..=999).chain([0, 7, 42, 1000, 65535]) {
        let mut block = Vec::new();
        encode_status(code, &mut block);
        encode_field(b"server", b"splitgate", false, &mut block);
        let fields = decode_ok(&mut Decoder::new(4096), &block);
        assert_eq!(
            fields,
            plain(&[(":status", &code.to_string()), ("server", "splitgate")]),
            "{code}"
        );
    }
}

#[test]
#[ignore = "a micro-benchmark: cargo test --release -- --ignored --nocapture decoder_speed"]
fn decoder_speed() {
    // A browser-like request: Huffman-coded literals without indexing, names by index where
    // the static table has them, so each round decodes the same thing.
    let fields: [(&str, &str); 9] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "www.example.com"),
        (":path", "/assets/app.3f9c2a.js?v=20240101"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        (
            "cookie",
            "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark",
        ),
    ];
    let mut block = Vec::new();
    for (name, value) in fields {
        match static_name_index(name.as_bytes()) {
            Some(index) => integer::encode(&mut block, 0x00, 4, index),
            None => unreachable!(),
        }
        let coded = huffman_encode(value.as_bytes());
        integer::encode(&mut block, 0x80, 7, coded.len());
        block.extend(coded);
    }
    let mut decoder = Decoder::new(4096);
    let rounds = 20_000;
    let mut bytes = 0;
    // The best of ten runs, as other work on the machine only slows a run down.
    let best = (0..10)
        .map(|_| {
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                decoder
                    .decode(std::hint::black_box(&block), 65_536, |f| {
                        bytes += f.name.len() + f.value.len()
                    })
                    .unwrap();
            }
            start.elapsed()
        })
        .min()
        .unwrap();
    println!(
        "{} block bytes, {} field bytes: {:.0} ns per block",
        block.len(),
        bytes / rounds / 10,
        best.as_nanos() as f64 / rounds as f64
    );
}
