//! TLS for the client listeners (rustls, ring provider, ALPN `h2` and `http/1.1`), with the
//! certificate and key reloaded when their files change; and the rustls client config for TLS
//! to the workers (`upstream_tls`).
//!
//! The served certificate sits in an `ArcSwap` behind a rustls certificate resolver, so a new
//! certificate applies to the next handshake without touching listeners or connections. A
//! certificate that does not load leaves the current one in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::digest::sha256_hex;

/// Why a certificate or key did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("{path}: cannot load certificate chain: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The key file could not be read, holds no PEM key, or the key type is unsupported.
    #[error("{path}: cannot load private key: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The file at fault (none for a rustls configuration error).
    pub fn path(&self) -> Option<&str> {
        match self {
            TlsError::Cert { path, .. } | TlsError::Key { path, .. } => Some(path),
            TlsError::Rustls(_) => None,
        }
    }

    /// What is wrong, without the file name.
    pub fn reason(&self) -> String {
        match self {
            TlsError::Cert { reason, .. } => format!("cannot load certificate chain: {reason}"),
            TlsError::Key { reason, .. } => format!("cannot load private key: {reason}"),
            TlsError::Rustls(e) => format!("TLS configuration: {e}"),
        }
    }
}

/// Reads a PEM certificate chain and private key (each a regular file of at most
/// [`crate::files::MAX_NAMED_FILE_BYTES`]).
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<(CertifiedKey, String), TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let key_err = |reason: String| TlsError::Key {
        path: key.display().to_string(),
        reason,
    };
    let read = |path| crate::files::read(path, crate::files::MAX_NAMED_FILE_BYTES);
    let cert_bytes = read(cert).map_err(|e| cert_err(e.to_string()))?;
    let key_bytes = read(key).map_err(|e| key_err(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate found".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| key_err(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| key_err(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        // `Unknown`: the signing key cannot tell its public half; nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(key_err(format!("does not match the certificate: {e}"))),
    }
    let mut both = cert_bytes;
    both.extend_from_slice(&key_bytes);
    Ok((ck, sha256_hex(&both)))
}

/// A non-zero digest of the CA bundle and the server name.
pub(crate) fn tls_fingerprint(pem: &[u8], server_name: Option<&str>) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(pem);
    ctx.update(&[0]);
    ctx.update(server_name.unwrap_or("").as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(first).max(1)
}

/// A rustls client config trusting the PEM certificates in `pem`, offering HTTP/1.1.
pub(crate) fn upstream_client_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The served certificate, swappable at runtime.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    /// `(cert path, key path, sha256 of both files)` of the certificate in force.
    source: Mutex<(PathBuf, PathBuf, String)>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertStore {
    /// Loads the certificate and key; fails when they do not load.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let (ck, sha) = load_certified_key(cert, key)?;
        Ok(Arc::new(CertStore {
            current: ArcSwap::from_pointee(ck),
            source: Mutex::new((cert.to_path_buf(), key.to_path_buf(), sha)),
        }))
    }

    /// The rustls server config serving this store's certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The files the certificate comes from.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        let s = self.source.lock().unwrap_or_else(|e| e.into_inner());
        (s.0.clone(), s.1.clone())
    }

    /// Loads and checks `cert`/`key` (new paths from a reload, or the same files) without
    /// serving them yet; `None` when their bytes equal the certificate in force. A reload
    /// prepares before it applies anything, so a bad pair fails the reload whole.
    pub fn prepare(&self, cert: &Path, key: &Path) -> Result<Option<Prepared>, TlsError> {
        let (ck, sha) = load_certified_key(cert, key)?;
        let src = self.source.lock().unwrap_or_else(|e| e.into_inner());
        if src.2 == sha {
            return Ok(None);
        }
        Ok(Some(Prepared {
            ck,
            source: (cert.to_path_buf(), key.to_path_buf(), sha),
        }))
    }

    /// Serves a prepared certificate from the next handshake on.
    pub fn install(&self, prepared: Prepared) {
        let mut src = self.source.lock().unwrap_or_else(|e| e.into_inner());
        self.current.store(Arc::new(prepared.ck));
        tracing::info!(cert = %prepared.source.0.display(), "TLS certificate reloaded");
        *src = prepared.source;
    }
}

/// A certificate and key that loaded and match, waiting for [`CertStore::install`].
#[derive(Debug)]
pub struct Prepared {
    ck: CertifiedKey,
    source: (PathBuf, PathBuf, String),
}
