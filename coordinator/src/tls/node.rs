//! A node's TLS as its files say now: loaded and checked at start ([`from_config`]), then
//! followed ([`follow_files`]) so certificates, keys, CAs and revocation lists rotate without a
//! restart.

use super::{AUDIT_EVERY, FileError, Material, NODE_NAME, accept, is_node_cert};
use crate::config::{Config, ConfigError, TlsConfig};
use crate::node::AppRef;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::ClientTlsConfig;

/// How often a node looks at its `tls:` files for a rotated certificate, key or CA.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// What a node serves and dials with, built from its `tls:` files.
struct Loaded {
    /// The gRPC listener's handshakes.
    grpc: tokio_rustls::TlsAcceptor,
    /// The HTTP listener's handshakes (HTTPS with the node's certificate).
    http: tokio_rustls::TlsAcceptor,
    /// How it dials peers.
    client: ClientTlsConfig,
    /// SHA-256 of the leaf certificate, hex (names the certificate in logs and the audit chain).
    fingerprint: String,
    /// The CA certificates peers are verified against.
    roots: Arc<rustls::RootCertStore>,
    /// The last second (Unix time) the certificate verifies (see [`Material::valid_until`]).
    valid_until: Option<u64>,
    /// Counts loads (1 = as started): cached peer channels of an older generation are replaced.
    generation: u64,
}

/// A file's modification time and length, as last looked at (a rewrite changes one of them).
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamps(files: &TlsConfig) -> [Stamp; 4] {
    let stamp = |f: &Path| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    [stamp(&files.ca), stamp(&files.cert), stamp(&files.key), files.crl.as_deref().and_then(stamp)]
}

/// Reads and checks a node's `tls:` files as at startup: the CA, a node certificate usable as
/// a server's and a client's, a key that fits it.
fn load_node(files: &TlsConfig) -> Result<Loaded, FileError> {
    let TlsConfig { ca, cert, key, crl } = files;
    let mut m = Material::load(ca, cert, key)?;
    if let Some(crl) = crl {
        m.load_crls(crl)?;
    }
    if !is_node_cert(&m.chain[0]) {
        return Err(FileError {
            field: "tls.cert",
            message: format!("{}: a node certificate must carry the DNS name {NODE_NAME}", cert.display()),
        });
    }
    m.verify(webpki::KeyUsage::server_auth()).map_err(|e| FileError {
        field: "tls.cert",
        message: format!("{}: not usable as a server certificate: {e}", cert.display()),
    })?;
    use sha2::Digest;
    Ok(Loaded {
        grpc: tokio_rustls::TlsAcceptor::from(Arc::new(m.server()?)),
        http: tokio_rustls::TlsAcceptor::from(Arc::new(m.http_server()?)),
        client: m.client(),
        fingerprint: hex::encode(sha2::Sha256::digest(m.chain[0].as_ref())),
        roots: Arc::new(m.roots().map_err(|message| FileError { field: "tls.ca", message })?),
        valid_until: m.valid_until(),
        generation: 1,
    })
}

/// Loads the node's `tls:` section (None without one); errors name the field and the file.
pub fn from_config(cfg: &Config) -> Result<Option<Arc<NodeTls>>, ConfigError> {
    let Some(files) = &cfg.tls else {
        return Ok(None);
    };
    let seen = stamps(files);
    let loaded = load_node(files).map_err(|e| cfg.error(e.field, e.message))?;
    Ok(Some(Arc::new(NodeTls {
        files: files.clone(),
        seen: Mutex::new(seen),
        current: std::sync::RwLock::new(Arc::new(loaded)),
        refusing: std::sync::atomic::AtomicBool::new(false),
        throttle: Mutex::new(accept::Throttle::new(AUDIT_EVERY)),
    })))
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files changed and now serve: the new leaf's fingerprint and the new generation.
    Applied {
        /// SHA-256 of the new leaf certificate, hex.
        fingerprint: String,
        /// Counts reloads (1 = as started).
        generation: u64,
        /// The last second (Unix time) the new certificate verifies.
        valid_until: Option<u64>,
    },
    /// The files changed but cannot be used; the node goes on with what it had.
    Refused(FileError),
}

/// A node's TLS: the acceptors, the dialing config and the refusal-audit throttle. The files
/// are re-read when they change ([`NodeTls::reload_if_changed`]), so certificates and CAs
/// rotate without a restart: new handshakes use the new material, connections already open
/// keep theirs (TLS checks certificates only at the handshake).
pub struct NodeTls {
    files: TlsConfig,
    /// The files' stamps when last looked at (a refused rewrite is not retried until it changes).
    seen: Mutex<[Stamp; 4]>,
    current: std::sync::RwLock<Arc<Loaded>>,
    /// Whether the files as they are now were refused (the node serves older ones).
    refusing: std::sync::atomic::AtomicBool,
    throttle: Mutex<accept::Throttle>,
}

impl NodeTls {
    fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs gRPC handshakes with the current certificate and CA.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current().grpc.clone()
    }

    /// Runs HTTPS handshakes with the current certificate.
    pub fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current().http.clone()
    }

    /// How to dial peers now.
    pub fn client(&self) -> ClientTlsConfig {
        self.current().client.clone()
    }

    /// The current certificate's SHA-256, hex.
    pub fn fingerprint(&self) -> String {
        self.current().fingerprint.clone()
    }

    /// The last second (Unix time) the certificate in use verifies under the CA in use.
    pub fn valid_until(&self) -> Option<u64> {
        self.current().valid_until
    }

    /// The last second (Unix time) a peer's certificate chain (leaf first, as it presented it)
    /// verifies as a client under the CA in use: an agent's expiry, seen from the node.
    pub fn peer_valid_until(&self, chain: &[rustls::pki_types::CertificateDer<'_>]) -> Option<u64> {
        let (leaf, rest) = chain.split_first()?;
        let ee = webpki::EndEntityCert::try_from(leaf).ok()?;
        let roots = self.current().roots.clone();
        super::last_valid_second(|t| {
            let usage = webpki::KeyUsage::client_auth();
            ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &roots.roots, rest, t, usage, None, None).is_ok()
        })
    }

    /// How many times the material was (re)loaded; channels dialed under an older one are stale.
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// Whether the files on disk were refused at the last look (the node serves older ones).
    pub fn refusing(&self) -> bool {
        self.refusing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Re-reads the files if any changed since last looked at: `None` when none did.
    pub fn reload_if_changed(&self) -> Option<Reload> {
        let now = stamps(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        let reload = match load_node(&self.files) {
            Ok(mut loaded) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                loaded.generation = current.generation + 1;
                let applied = Reload::Applied {
                    fingerprint: loaded.fingerprint.clone(),
                    generation: loaded.generation,
                    valid_until: loaded.valid_until,
                };
                *current = Arc::new(loaded);
                applied
            }
            Err(e) => Reload::Refused(e),
        };
        self.refusing.store(matches!(reload, Reload::Refused(_)), std::sync::atomic::Ordering::Release);
        Some(reload)
    }

    /// Whether a refusal of kind `what` from `peer` should be audited now (see [`AUDIT_EVERY`]).
    pub fn should_audit(&self, peer: Option<SocketAddr>, what: &str) -> bool {
        let ip = peer.map(|p| p.ip()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        self.throttle.lock().unwrap_or_else(|p| p.into_inner()).allow(ip, what, Instant::now())
    }
}

/// `secs` (Unix time) as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Follows the node's `tls:` files for as long as the process runs: a rotated certificate, key
/// or CA is loaded within [`RELOAD_EVERY`] and recorded as `tls.reloaded`; files that cannot be
/// used are recorded as `tls.reload_refused` (naming the field and why) and the node goes on
/// with what it had. Half-written files are simply refused, then taken once whole.
pub async fn follow_files(app: AppRef, tls: Arc<NodeTls>) {
    let valid_until = tls.valid_until().map(rfc3339).unwrap_or_default();
    tracing::info!(fingerprint = %tls.fingerprint(), %valid_until, "tls: serving this certificate");
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (action, details) = match tls.reload_if_changed() {
            None => continue,
            Some(Reload::Applied { fingerprint, generation, valid_until }) => {
                let valid_until = valid_until.map(rfc3339).unwrap_or_default();
                tracing::info!(%fingerprint, generation, %valid_until, "tls files reloaded: new handshakes and peer connections use them");
                let details = serde_json::json!({ "node": app.id, "fingerprint": fingerprint,
                                                  "generation": generation, "valid_until": valid_until });
                ("tls.reloaded", details)
            }
            Some(Reload::Refused(e)) => {
                tracing::error!(field = e.field, "tls files not reloaded, keeping the previous ones: {}", e.message);
                ("tls.reload_refused", serde_json::json!({ "node": app.id, "field": e.field, "reason": e.message }))
            }
        };
        crate::auth::record(&app, &format!("node-{}", app.id), action, details).await;
    }
}
