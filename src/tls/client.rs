//! TLS to upstreams, from a service's `policy.tls`: the trusted CAs, the name to verify (and
//! send as SNI), and ALPN for the protocol spoken.

use super::provider;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Where the CAs come from when `ca_file` is not given: the system bundle (Debian's path).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A service's upstream TLS, built when its config is validated.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// rustls client settings.
    pub config: Arc<ClientConfig>,
    /// The name verified in the upstream's certificate and sent as SNI.
    pub server_name: ServerName<'static>,
    /// What the settings were built from, to tell whether pooled connections can be kept.
    identity: (u64, String, bool, bool),
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

impl Eq for UpstreamTls {}

impl Hash for UpstreamTls {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity.hash(state);
    }
}

/// A problem with `policy.tls`: the field at fault and why.
#[derive(Debug)]
pub struct TlsSettingError {
    /// `ca_file` or `sni`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl UpstreamTls {
    /// Builds the settings. `ca_pem` is the content of the CA file (ignored, and may be empty,
    /// with `insecure_skip_verify`); `h2` picks the ALPN offered.
    pub fn new(
        ca_pem: &[u8],
        sni: &str,
        insecure_skip_verify: bool,
        h2: bool,
    ) -> Result<Self, TlsSettingError> {
        let server_name = ServerName::try_from(sni.to_string()).map_err(|e| TlsSettingError {
            field: "sni",
            message: format!("{sni:?} is not a DNS name or IP address: {e}"),
        })?;
        let provider = Arc::new(provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let mut config = if insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate::new()))
                .with_no_client_auth()
        } else {
            builder
                .with_root_certificates(roots(ca_pem)?)
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
            identity: (
                crate::config::content_hash(ca_pem),
                sni.to_string(),
                insecure_skip_verify,
                h2,
            ),
        })
    }
}

fn roots(ca_pem: &[u8]) -> Result<RootCertStore, TlsSettingError> {
    let error = |message: String| TlsSettingError {
        field: "ca_file",
        message,
    };
    let certs = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error("holds no CERTIFICATE block".into()));
    }
    let mut roots = RootCertStore::empty();
    let (_, rejected) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(error(format!(
            "none of its {rejected} certificate(s) can be used as a CA"
        )));
    }
    Ok(roots)
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are
/// still checked, so the connection is encrypted to whoever holds the presented key. (Tests
/// use it too, to see which certificate a server presents.)
#[derive(Debug)]
pub struct AnyCertificate(Arc<CryptoProvider>);

impl AnyCertificate {
    /// A verifier on the same provider as every TLS config here.
    pub fn new() -> Self {
        AnyCertificate(Arc::new(provider()))
    }
}

impl Default for AnyCertificate {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
