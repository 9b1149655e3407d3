//! Certificates made at test time (rcgen), and TLS clients (rustls) that report what they saw.
//! No private key is ever committed: every key here lives in a temp dir for one test.

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate and its key, PEM, with the serial it was given (lowercase hex, as
/// `/v1/state` shows it).
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
}

static SERIAL: AtomicU64 = AtomicU64::new(0x1000);

fn next_serial() -> (SerialNumber, String) {
    // Distinct per process and per call; a leading 0x01 byte keeps it positive and unpadded.
    let n = SERIAL.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u64) << 32;
    let bytes: Vec<u8> = std::iter::once(1u8).chain(n.to_be_bytes()).collect();
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (SerialNumber::from_slice(&bytes), hex)
}

fn params(names: &[&str], common_name: &str) -> (CertificateParams, String) {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("valid SANs");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let (serial, hex) = next_serial();
    p.serial_number = Some(serial);
    (p, hex)
}

/// A private CA that signs leaf certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (what a client or `ca_file` trusts).
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let (mut p, _) = params(&[], name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("CA cert");
        TestCa {
            issuer: Issuer::new(p, key),
            pem: cert.pem(),
        }
    }

    /// A leaf for `names` (DNS names or IPs), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Pair {
        let (p, serial) = params(names, names.first().copied().unwrap_or("leaf"));
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("leaf cert");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        }
    }
}

/// A self-signed certificate for `names`.
pub fn self_signed(names: &[&str]) -> Pair {
    let (p, serial) = params(names, names.first().copied().unwrap_or("self"));
    sign_self(p, serial)
}

/// A self-signed certificate for `names` whose validity ended in 2020.
pub fn expired(names: &[&str]) -> Pair {
    let (mut p, serial) = params(names, names.first().copied().unwrap_or("expired"));
    p.not_before = rcgen::date_time_ymd(2019, 1, 1);
    p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    sign_self(p, serial)
}

fn sign_self(p: CertificateParams, serial: String) -> Pair {
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("cert");
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial,
    }
}

/// Writes `pair` as `<stem>.crt` and `<stem>.key` in `dir`; returns both paths.
pub fn write_pair(dir: &Path, stem: &str, pair: &Pair) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &pair.cert_pem).expect("write cert");
    std::fs::write(&key, &pair.key_pem).expect("write key");
    (cert, key)
}

/// A rustls client trusting the PEM certificates in `roots`, offering `alpn`.
pub fn client_config(roots: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
            let cert: CertificateDer<'static> = cert.expect("PEM root");
            store.add(cert).expect("root");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects and completes a TLS handshake sending `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The serial (lowercase hex) of the certificate the server presented.
pub fn peer_serial(stream: &TlsStream<TcpStream>) -> String {
    let (_, conn) = stream.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presented a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).expect("parsable certificate");
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The ALPN protocol the handshake settled on.
pub fn negotiated_alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// What an HTTPS exchange gave back.
#[derive(Debug)]
pub struct HttpsAnswer {
    pub status: u16,
    pub version: Version,
    pub headers: http::HeaderMap,
    pub body: String,
    pub serial: String,
}

/// One GET over a fresh TLS connection; HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<HttpsAnswer, String> {
    let stream = tls_connect(addr, sni, config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let serial = peer_serial(&stream);
    let h2 = negotiated_alpn(&stream).as_deref() == Some(b"h2");
    let io = TokioIo::new(stream);
    let resp: Response<hyper::body::Incoming> = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(format!("https://{sni}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, sni)
            .body(Full::new(Bytes::new()))
            .expect("request");
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(HttpsAnswer {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        serial,
    })
}
