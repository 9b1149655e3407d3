//! Listener TLS: certificate/key pairs read from PEM files, chosen per handshake by SNI, and
//! swapped in when their files change.
//!
//! A pair is checked whole before it serves: both files readable, the key usable and matching
//! the certificate. A pair whose new files fail that check keeps serving its old certificate;
//! the failure is logged, counted and shown in `/v1/state`.

use super::provider;
use crate::config::files::{read_regular, FileError, MAX_FILE_BYTES};
use crate::metrics::hub::{ResultLabel, SelfMetrics};
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A certificate file and its key file, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Why a pair cannot serve: which of its two files is at fault, and how.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field} {path}: {message}")]
pub struct CertError {
    /// `cert_file` or `key_file`.
    pub field: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl CertError {
    fn cert(paths: &CertPaths, message: impl Into<String>) -> Self {
        CertError {
            field: "cert_file",
            path: paths.cert_file.display().to_string(),
            message: message.into(),
        }
    }

    fn key(paths: &CertPaths, message: impl Into<String>) -> Self {
        CertError {
            field: "key_file",
            path: paths.key_file.display().to_string(),
            message: message.into(),
        }
    }
}

/// What the leaf certificate says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// DNS names it is valid for (its SANs, else its common name), lowercase.
    pub names: Vec<String>,
    /// Serial number, hex.
    pub serial: String,
    /// End of validity, as the certificate states it.
    pub not_after: String,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
}

impl CertInfo {
    /// Whether the certificate's validity has ended.
    pub fn expired(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.not_after_unix < now
    }
}

/// A pair that passed every check.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// Its leaf's facts.
    pub info: CertInfo,
}

/// Reads and checks a pair.
pub fn load_pair(paths: &CertPaths) -> Result<LoadedCert, CertError> {
    let (cert, key) = read_pair(paths)?;
    parse_pair(paths, &cert, &key)
}

/// A certificate or key file's bytes, or why it cannot be read.
fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, String> {
    match read_regular(path, MAX_FILE_BYTES) {
        Ok(bytes) => Ok(bytes),
        Err(e @ FileError::Io(_)) => Err(format!("cannot be read: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

fn read_pair(paths: &CertPaths) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let cert = read_pem(&paths.cert_file).map_err(|m| CertError::cert(paths, m))?;
    let key = read_pem(&paths.key_file).map_err(|m| CertError::key(paths, m))?;
    Ok((cert, key))
}

fn parse_pair(paths: &CertPaths, cert: &[u8], key: &[u8]) -> Result<LoadedCert, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::cert(paths, format!("is not valid PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::cert(paths, "holds no CERTIFICATE block"));
    };
    let info = cert_info(leaf).map_err(|m| CertError::cert(paths, m))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| CertError::key(paths, format!("holds no usable private key: {e}")))?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::key(paths, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(CertError::key(
                paths,
                format!(
                    "does not belong to the certificate in {}",
                    paths.cert_file.display()
                ),
            ))
        }
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        info,
    })
}

fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let not_after = cert.validity().not_after;
    Ok(CertInfo {
        names,
        serial,
        not_after: not_after.to_string(),
        not_after_unix: not_after.timestamp(),
    })
}

/// The certificates one listener serves, indexed by name.
#[derive(Debug)]
struct CertSet {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is kept as `example.com`: it matches one label in front of it.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    fn new(loaded: &[LoadedCert]) -> Self {
        let mut set = CertSet {
            certs: loaded.iter().map(|l| l.key.clone()).collect(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        // The first certificate that names a host serves it.
        for (i, l) in loaded.iter().enumerate() {
            for name in &l.info.names {
                match name.strip_prefix("*.") {
                    Some(parent) => set.wildcard.entry(parent.to_string()).or_insert(i),
                    None => set.exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        set
    }

    /// The certificate for `sni`; the first one when there is no SNI or no certificate names it.
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let index = sni
            .and_then(|name| {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.exact.get(&name).copied().or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(0);
        self.certs.get(index).cloned()
    }
}

/// One configured pair: what serves now, and what its files held when last read.
#[derive(Debug)]
struct Slot {
    paths: CertPaths,
    serving: LoadedCert,
    /// Hash of the files' bytes last read, good or bad, so a bad pair is reported once.
    seen: u64,
    last_error: Option<(String, SystemTime)>,
}

/// A TLS listener's certificates: the resolver rustls asks at each handshake.
#[derive(Debug)]
pub struct CertStore {
    listener: String,
    live: ArcSwap<CertSet>,
    slots: Mutex<Vec<Slot>>,
    metrics: SelfMetrics,
}

fn pair_hash(cert: &[u8], key: &[u8]) -> u64 {
    crate::config::content_hash(&[cert, b"\0", key].concat())
}

impl CertStore {
    /// Loads every pair of a listener; any bad pair fails the whole listener.
    pub fn load(
        listener: &str,
        pairs: &[CertPaths],
        metrics: SelfMetrics,
    ) -> Result<Arc<Self>, CertError> {
        let mut slots = Vec::with_capacity(pairs.len());
        for paths in pairs {
            let (cert, key) = read_pair(paths)?;
            let serving = parse_pair(paths, &cert, &key)?;
            if serving.info.expired() {
                tracing::warn!(listener, cert_file = %paths.cert_file.display(), not_after = %serving.info.not_after, "serving an expired certificate");
            }
            slots.push(Slot {
                paths: paths.clone(),
                serving,
                seen: pair_hash(&cert, &key),
                last_error: None,
            });
        }
        let serving: Vec<LoadedCert> = slots.iter().map(|s| s.serving.clone()).collect();
        Ok(Arc::new(CertStore {
            listener: listener.to_string(),
            live: ArcSwap::from_pointee(CertSet::new(&serving)),
            slots: Mutex::new(slots),
            metrics,
        }))
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// Every file to watch.
    pub fn files(&self) -> Vec<PathBuf> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .flat_map(|s| [s.paths.cert_file.clone(), s.paths.key_file.clone()])
            .collect()
    }

    /// Re-reads every pair whose files changed and swaps in those that pass the checks.
    /// Returns how many pairs were replaced.
    pub fn refresh(&self) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut replaced = 0;
        for slot in slots.iter_mut() {
            // A file missing for a moment (a swap in progress) is read again at the next wake.
            let Ok((cert, key)) = read_pair(&slot.paths) else {
                continue;
            };
            let hash = pair_hash(&cert, &key);
            if hash == slot.seen {
                continue;
            }
            slot.seen = hash;
            let cert_file = slot.paths.cert_file.display().to_string();
            match parse_pair(&slot.paths, &cert, &key) {
                Ok(loaded) => {
                    tracing::info!(listener = %self.listener, cert_file, serial = %loaded.info.serial, not_after = %loaded.info.not_after, "certificate reloaded");
                    if loaded.info.expired() {
                        tracing::warn!(listener = %self.listener, cert_file, not_after = %loaded.info.not_after, "the new certificate has expired; serving it anyway");
                    }
                    slot.serving = loaded;
                    slot.last_error = None;
                    replaced += 1;
                    self.count("ok");
                }
                Err(e) => {
                    tracing::warn!(listener = %self.listener, error = %e, serial = %slot.serving.info.serial, "new certificate rejected; the previous one keeps serving");
                    slot.last_error = Some((e.to_string(), SystemTime::now()));
                    self.count("error");
                }
            }
        }
        if replaced > 0 {
            let serving: Vec<LoadedCert> = slots.iter().map(|s| s.serving.clone()).collect();
            self.live.store(Arc::new(CertSet::new(&serving)));
        }
        replaced
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .cert_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// What `/v1/state` shows of this listener.
    pub fn view(&self) -> ListenerTlsView {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        ListenerTlsView {
            listener: self.listener.clone(),
            certificates: slots
                .iter()
                .map(|s| CertView {
                    cert_file: s.paths.cert_file.display().to_string(),
                    key_file: s.paths.key_file.display().to_string(),
                    serving: s.serving.info.clone(),
                    expired: s.serving.info.expired(),
                    last_error: s.last_error.as_ref().map(|(e, _)| e.clone()),
                    last_error_unix_ms: s
                        .last_error
                        .as_ref()
                        .map(|(_, at)| at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())),
                })
                .collect(),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.live.load().pick(hello.server_name())
    }
}

/// A TLS listener as `/v1/state` shows it.
#[derive(Debug, Serialize)]
pub struct ListenerTlsView {
    /// Listener name.
    pub listener: String,
    /// Its pairs, in config order.
    pub certificates: Vec<CertView>,
}

/// One pair as `/v1/state` shows it.
#[derive(Debug, Serialize)]
pub struct CertView {
    /// Certificate file.
    pub cert_file: String,
    /// Key file.
    pub key_file: String,
    /// The certificate serving now.
    pub serving: CertInfo,
    /// Whether it is past its end of validity.
    pub expired: bool,
    /// Why the files' current content was rejected, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When that was, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_unix_ms: Option<u128>,
}

/// The rustls settings of a TLS listener: TLS 1.3 and 1.2, ALPN h2 then http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What [`check_pairs`] found, by index of the pair.
#[derive(Debug, Default)]
pub struct PairProblems {
    /// Pairs that cannot serve.
    pub errors: Vec<(usize, CertError)>,
    /// Pairs whose certificate has expired.
    pub expired: Vec<(usize, String)>,
}

/// Checks a listener's pairs as `splitgate validate` does: errors for what cannot serve, and a
/// warning for an expired certificate.
pub fn check_pairs(pairs: &[CertPaths]) -> PairProblems {
    let mut found = PairProblems::default();
    for (j, paths) in pairs.iter().enumerate() {
        match load_pair(paths) {
            Ok(l) if l.info.expired() => found.expired.push((
                j,
                format!(
                    "the certificate in {} expired on {}",
                    paths.cert_file.display(),
                    l.info.not_after
                ),
            )),
            Ok(_) => {}
            Err(e) => {
                // A certificate that cannot be read hides its key's problem: name both at once.
                let key_too = (e.field == "cert_file")
                    .then(|| read_pem(&paths.key_file).err())
                    .flatten();
                found.errors.push((j, e));
                if let Some(m) = key_too {
                    found.errors.push((j, CertError::key(paths, m)));
                }
            }
        }
    }
    found
}
