//! TLS for the agent: the process-wide rustls crypto provider, and the agent's certificate
//! and cluster CA ([`AgentTls`]), read again at each connection so they rotate without a
//! restart.
//!
//! reqwest is built with `rustls-no-provider` and rustls with `ring` only: one provider in the
//! dependency graph and no `aws-lc-sys` C build. rustls then needs the provider installed before
//! the first client is built (reqwest panics otherwise), and two installed providers make the
//! first handshake panic, so everything goes through [`install_crypto_provider`].

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::{Mutex, Once};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The DNS name coordinators are verified against (every node certificate carries it).
const NODE_NAME: &str = "node.drcut.internal";

/// The `tls:` files of an agent and the config last built from them.
pub struct AgentTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The last usable config and the files' contents it came from.
    last: Mutex<(Vec<u8>, ClientTlsConfig)>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls").field("ca", &self.ca).field("cert", &self.cert).field("key", &self.key).finish()
    }
}

/// A `tls:` file that cannot be used: the field (`ca`, `cert` or `key`) and why, naming the file.
pub type FileError = (&'static str, String);

/// Reads and checks the files: the CA and certificate hold certificates, the key is a key.
fn load(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<u8>, ClientTlsConfig), FileError> {
    let read = |field, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| (field, format!("{}: cannot read: {e}", p.display())))
    };
    let (ca_pem, cert_pem, key_pem) = (read("ca", ca)?, read("cert", cert)?, read("key", key)?);
    for (field, path, pem) in [("ca", ca, &ca_pem), ("cert", cert, &cert_pem)] {
        let n = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (field, format!("{}: bad PEM: {e}", path.display())))?
            .len();
        if n == 0 {
            return Err((field, format!("{}: no CERTIFICATE block in the file", path.display())));
        }
    }
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| ("key", format!("{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}", key.display())))?;
    let contents = [ca_pem.as_slice(), &cert_pem, &key_pem].concat();
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name(NODE_NAME);
    Ok((contents, config))
}

impl AgentTls {
    /// Reads the files now (a config error names the field when they cannot be used).
    pub fn open(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Result<AgentTls, FileError> {
        let first = load(&ca, &cert, &key)?;
        Ok(AgentTls { ca, cert, key, last: Mutex::new(first) })
    }

    /// The config for a new connection: what the files hold now, or, when they cannot be used
    /// (half written, a mistake), the last usable one, with an error in the log.
    pub fn current(&self) -> ClientTlsConfig {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match load(&self.ca, &self.cert, &self.key) {
            Ok((contents, config)) if contents != last.0 => {
                tracing::info!(cert = %self.cert.display(), "tls files changed: new connections present the new certificate");
                *last = (contents, config);
            }
            Ok(_) => {}
            Err((field, e)) => {
                tracing::error!(field = %format!("tls.{field}"), "tls files not usable, keeping the previous ones: {e}")
            }
        }
        last.1.clone()
    }
}

/// Installs rustls' ring provider as the process default; idempotent, safe from any thread.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed (by a test harness or a library): that one
        // stays, which is what rustls wants, so there is nothing to do about it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_name_the_field_and_keep_the_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (dir.path().join("ca.pem"), dir.path().join("a.pem"), dir.path().join("a.key"));
        let e = AgentTls::open(ca.clone(), cert.clone(), key.clone()).unwrap_err();
        assert_eq!(e.0, "ca");
        assert!(e.1.contains("ca.pem: cannot read"), "{e:?}");
        std::fs::write(&ca, "not a pem").unwrap();
        std::fs::write(&cert, "").unwrap();
        std::fs::write(&key, "").unwrap();
        let e = AgentTls::open(ca.clone(), cert.clone(), key.clone()).unwrap_err();
        assert_eq!(e.0, "ca");
        assert!(e.1.contains("no CERTIFICATE block"), "{e:?}");
    }
    #[test]
    fn install_is_idempotent() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
