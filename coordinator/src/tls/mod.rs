//! Mutual TLS between nodes, agents and clients, under one private CA per cluster.
//!
//! Who holds a certificate is read from its DNS subject alternative names, with the name
//! matching webpki already does for servers ("is this certificate valid for name X?"), so no
//! X.509 parser of our own is involved:
//!
//! - a coordinator node: [`NODE_NAME`] (`node.drcut.internal`), plus whatever names and IPs it
//!   is dialed at. Every client verifies servers against that one name, so a node is "any node
//!   of this cluster's CA", whatever address the client used;
//! - the agent of region R: `R.agent.drcut.internal` ([`agent_name`]);
//! - anything else (an operator, automation): any name; it gets nothing from its certificate
//!   (the `Control` service authenticates API tokens).
//!
//! The chain itself is verified by rustls during the handshake ([`accept`]); the services then
//! only ask which of these names a verified certificate carries. A node's certificate, key, CA
//! and revocation lists follow its files while it runs ([`node`]).

pub mod accept;
pub mod node;

pub use node::{NodeTls, RELOAD_EVERY, Reload, follow_files, from_config, rfc3339};

use crate::node::AppRef;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, DnsName, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::{Code, Status};

/// The DNS name every coordinator node certificate carries; clients verify servers against it.
pub const NODE_NAME: &str = "node.drcut.internal";
/// The suffix of agent names: the agent of region R holds `R.agent.drcut.internal`.
pub const AGENT_SUFFIX: &str = ".agent.drcut.internal";
/// At most one audit record per peer IP and kind of refusal per this period: a scanner or a
/// misconfigured agent retrying must not flood the Raft log.
pub const AUDIT_EVERY: Duration = Duration::from_secs(10);

/// Installs rustls' ring provider as the process default (idempotent). The process must have
/// exactly one provider: with two, rustls panics at the first handshake; ring is the only one
/// built (no aws-lc-sys).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: one is installed already (by an embedder); that one stays, as rustls wants.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The name an agent certificate for `region` carries.
pub fn agent_name(region: &str) -> String {
    format!("{region}{AGENT_SUFFIX}")
}

/// Whether `cert` is valid for DNS name `name` (SAN matching as webpki does it for servers).
fn valid_for(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(dns) = DnsName::try_from(name.to_string()) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.verify_is_valid_for_subject_name(&ServerName::DnsName(dns)).is_ok(),
        Err(_) => false,
    }
}

/// The DNS names in `cert` (for messages only: decisions use [`valid_for`]).
fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.valid_dns_names().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// The DNS names `cert` carries literally, wildcards left out (a client certificate stands
/// for a principal only by a name it names exactly).
pub fn exact_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    dns_names(cert).into_iter().filter(|n| !n.contains('*')).collect()
}

/// The last second (Unix time) at which `verifies` still holds, given that it holds now and,
/// once false, stays false (certificate validity ends at notAfter). Found by bisection over
/// webpki's own verdicts (about 33 verifications) rather than by parsing X.509 ourselves.
/// `None` when it does not hold now.
pub fn last_valid_second(verifies: impl Fn(rustls::pki_types::UnixTime) -> bool) -> Option<u64> {
    let at = |secs: u64| verifies(rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(secs)));
    let now = rustls::pki_types::UnixTime::now().as_secs();
    // 9999-12-31T23:59:59Z, the last instant X.509 (GeneralizedTime) can name.
    let (mut lo, mut hi) = (now, 253_402_300_799u64);
    if !at(lo) {
        return None;
    }
    if at(hi) {
        return Some(hi);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if at(mid) { lo = mid } else { hi = mid }
    }
    Some(lo)
}

/// Whether `cert` is a coordinator node's certificate.
pub fn is_node_cert(cert: &CertificateDer<'_>) -> bool {
    valid_for(cert, NODE_NAME)
}

/// Checks that `cert` is the agent certificate of `claimed` region; the error says which
/// region the certificate is for. Wildcard names are refused: one certificate, one region.
pub fn check_agent_region(cert: &CertificateDer<'_>, claimed: &str) -> Result<(), String> {
    let names = dns_names(cert);
    let regions: Vec<&str> = names.iter().filter_map(|n| n.strip_suffix(AGENT_SUFFIX)).collect();
    if regions.iter().any(|r| r.contains('*')) {
        return Err(format!("agent certificates must name their region; wildcard {regions:?} refused"));
    }
    if valid_for(cert, &agent_name(claimed)) {
        return Ok(());
    }
    Err(match regions.as_slice() {
        [] => format!("the certificate is not an agent certificate (names {names:?}); agent claims region {claimed}"),
        rs => format!("certificate is for region {}, agent claims {claimed}", rs.join(", ")),
    })
}

/// The PEM files of a `tls:` section, read and parsed.
pub struct Material {
    /// The CA's PEM (what tonic's client config takes).
    ca_pem: Vec<u8>,
    /// The certificate chain's PEM.
    cert_pem: Vec<u8>,
    /// The private key's PEM.
    key_pem: Vec<u8>,
    /// The CA certificates.
    ca: Vec<CertificateDer<'static>>,
    /// This holder's chain, leaf first.
    chain: Vec<CertificateDer<'static>>,
    /// This holder's key.
    key: PrivateKeyDer<'static>,
    /// Revocation lists client certificates are checked against (none: no revocation check).
    crls: Vec<CertificateRevocationListDer<'static>>,
}

/// A file that could not be used: the config field naming it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// `tls.ca`, `tls.cert` or `tls.key`.
    pub field: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| FileError { field, message: format!("{}: cannot read: {e}", path.display()) })
}

fn certs(field: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| FileError { field, message: format!("{}: bad PEM: {e}", path.display()) })?;
    if certs.is_empty() {
        return Err(FileError { field, message: format!("{}: no CERTIFICATE block in the file", path.display()) });
    }
    Ok(certs)
}

impl Material {
    /// Reads the CA, certificate and key files; errors name the field and the file.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Material, FileError> {
        let ca_pem = read("tls.ca", ca)?;
        let cert_pem = read("tls.cert", cert)?;
        let key_pem = read("tls.key", key)?;
        let ca_certs = certs("tls.ca", ca, &ca_pem)?;
        let chain = certs("tls.cert", cert, &cert_pem)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| FileError {
            field: "tls.key",
            message: format!("{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}", key.display()),
        })?;
        let m = Material { ca_pem, cert_pem, key_pem, ca: ca_certs, chain, key: key_der, crls: Vec::new() };
        // Every holder dials someone, so every certificate must work as a client's. Checked
        // here because a certificate the CA did not sign would otherwise only fail at the
        // first handshake, far from the config that caused it.
        m.verify(webpki::KeyUsage::client_auth()).map_err(|e| FileError {
            field: "tls.cert",
            message: format!(
                "{}: not usable as a client certificate under the CA in {}: {e}",
                cert.display(),
                ca.display()
            ),
        })?;
        Ok(m)
    }

    /// Adds the revocation lists in `path` (PEM `X509 CRL` blocks; an empty file is none yet):
    /// client certificates they list are refused at the handshake.
    pub fn load_crls(&mut self, path: &Path) -> Result<(), FileError> {
        let pem = read("tls.crl", path)?;
        let crls: Vec<CertificateRevocationListDer<'static>> = CertificateRevocationListDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| FileError { field: "tls.crl", message: format!("{}: bad PEM: {e}", path.display()) })?;
        for (i, crl) in crls.iter().enumerate() {
            webpki::BorrowedCertRevocationList::from_der(crl).map_err(|e| FileError {
                field: "tls.crl",
                message: format!("{}: revocation list {} is not usable: {e}", path.display(), i + 1),
            })?;
        }
        self.crls = crls;
        Ok(())
    }

    /// Checks the chain against the CA for `usage`, now.
    fn verify(&self, usage: webpki::KeyUsage) -> Result<(), String> {
        self.verify_at(usage, rustls::pki_types::UnixTime::now())
    }

    /// Checks the chain against the CA for `usage` at time `at`.
    fn verify_at(&self, usage: webpki::KeyUsage, at: rustls::pki_types::UnixTime) -> Result<(), String> {
        let roots = self.roots()?;
        let ee =
            webpki::EndEntityCert::try_from(&self.chain[0]).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &roots.roots, &self.chain[1..], at, usage, None, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The last second (Unix time) at which this certificate still verifies under the CA: the
    /// earliest expiry of the leaf and any intermediate (see [`last_valid_second`]). `None`
    /// when it does not verify now.
    pub fn valid_until(&self) -> Option<u64> {
        last_valid_second(|t| self.verify_at(webpki::KeyUsage::client_auth(), t).is_ok())
    }

    fn roots(&self) -> Result<rustls::RootCertStore, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        Ok(roots)
    }

    /// The client side: trust the CA, verify servers as [`NODE_NAME`], present this
    /// certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(NODE_NAME)
    }

    /// The server side: this certificate, client certificates verified against the CA but
    /// optional (API callers authenticate with tokens; the machine services demand one).
    pub fn server(&self) -> Result<rustls::ServerConfig, FileError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = self.roots().map_err(|message| FileError { field: "tls.ca", message })?;
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).allow_unauthenticated();
        if !self.crls.is_empty() {
            // Certificates of a CA that publishes no list here (a new CA mid-rotation) pass.
            builder = builder
                .with_crls(self.crls.iter().cloned())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let verifier = builder.build().map_err(|e| match e {
            rustls::server::VerifierBuilderError::InvalidCrl(e) => {
                FileError { field: "tls.crl", message: format!("not a usable revocation list: {e:?}") }
            }
            e => FileError { field: "tls.ca", message: format!("cannot verify clients with it: {e}") },
        })?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FileError { field: "tls.cert", message: e.to_string() })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| FileError { field: "tls.key", message: format!("does not fit the certificate: {e}") })?;
        // gRPC is HTTP/2 only; tonic's client insists on h2 being negotiated.
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

impl Material {
    /// The HTTP listener's side (console, metrics): this certificate, no client certificate
    /// asked (browsers sign in with API tokens), HTTP/1.1.
    pub fn http_server(&self) -> Result<rustls::ServerConfig, FileError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FileError { field: "tls.cert", message: e.to_string() })?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| FileError { field: "tls.key", message: format!("does not fit the certificate: {e}") })?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// A client TLS config for tools (drctl, tests): trust `ca`, optionally present a certificate.
pub fn client_config(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Result<ClientTlsConfig, String> {
    let ca_pem = std::fs::read(ca).map_err(|e| format!("--ca {}: cannot read: {e}", ca.display()))?;
    certs("--ca", ca, &ca_pem).map_err(|e| e.message)?;
    let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)).domain_name(NODE_NAME);
    if let Some((cert, key)) = cert_key {
        let cert_pem = std::fs::read(cert).map_err(|e| format!("--cert {}: cannot read: {e}", cert.display()))?;
        let key_pem = std::fs::read(key).map_err(|e| format!("--key {}: cannot read: {e}", key.display()))?;
        certs("--cert", cert, &cert_pem).map_err(|e| e.message)?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("--key {}: no private key: {e}", key.display()))?;
        c = c.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(c)
}

/// Refuses with `code` and `message`, auditing it (throttled per peer) as a denial of `call`.
fn deny(app: &AppRef, tls: &NodeTls, call: &str, code: Code, peer: Option<SocketAddr>, message: String) -> Status {
    let who = peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown peer".into());
    let d = crate::auth::Denial { code, who, message };
    if tls.should_audit(peer, call) {
        crate::auth::audit_denied(app, call, &d, peer);
    } else {
        tracing::debug!(call, who = %d.who, "denied (audit throttled): {}", d.message);
    }
    d.to_status()
}

/// On a node with TLS: requires a node certificate for a `RaftTransport` call; refusals are
/// audited. Without TLS everything passes (the node warned at startup).
pub fn require_node<T>(app: &AppRef, call: &str, req: &tonic::Request<T>) -> Result<(), Status> {
    let Some(tls) = &app.tls else {
        return Ok(());
    };
    let peer = req.remote_addr();
    match req.peer_certs() {
        Some(c) if c.first().is_some_and(is_node_cert) => Ok(()),
        Some(c) if !c.is_empty() => Err(deny(
            app,
            tls,
            call,
            Code::PermissionDenied,
            peer,
            format!(
                "{call} needs a coordinator node certificate ({NODE_NAME}); this one is for {:?}",
                dns_names(&c[0])
            ),
        )),
        _ => Err(deny(
            app,
            tls,
            call,
            Code::Unauthenticated,
            peer,
            format!("{call} needs a coordinator node certificate; the caller presented none"),
        )),
    }
}

/// On a node with TLS: requires the certificate of `region`'s agent on an `AgentLink`
/// session; refusals are audited.
pub fn require_agent(
    app: &AppRef,
    certs: Option<&[CertificateDer<'static>]>,
    peer: Option<SocketAddr>,
    agent_id: &str,
    region: &str,
) -> Result<(), Status> {
    const CALL: &str = "AgentLink.Session";
    let Some(tls) = &app.tls else {
        return Ok(());
    };
    let Some(cert) = certs.and_then(|c| c.first()) else {
        return Err(deny(
            app,
            tls,
            CALL,
            Code::Unauthenticated,
            peer,
            format!("agent {agent_id:?}: AgentLink needs an agent certificate ({})", agent_name(region)),
        ));
    };
    check_agent_region(cert, region)
        .map_err(|m| deny(app, tls, CALL, Code::PermissionDenied, peer, format!("agent {agent_id:?}: {m}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> CertificateDer<'static> {
        test_cert(names)
    }

    /// A self-signed certificate with these DNS names (built by hand: rcgen is a test-crate
    /// dependency only). Uses the fixed DER template below with the SAN extension swapped.
    fn test_cert(names: &[&str]) -> CertificateDer<'static> {
        CertificateDer::from(der::self_signed_with_dns_names(names))
    }

    #[test]
    fn node_names() {
        assert!(is_node_cert(&cert(&["node.drcut.internal", "localhost"])));
        assert!(!is_node_cert(&cert(&["eu-west.agent.drcut.internal"])));
        assert!(!is_node_cert(&cert(&["node.drcut.internal.evil.example"])));
    }

    #[test]
    fn agent_region_must_match() {
        let c = cert(&["eu-west.agent.drcut.internal"]);
        assert_eq!(check_agent_region(&c, "eu-west"), Ok(()));
        assert_eq!(
            check_agent_region(&c, "us-east").unwrap_err(),
            "certificate is for region eu-west, agent claims us-east"
        );
        let n = cert(&["node.drcut.internal"]);
        assert!(check_agent_region(&n, "eu-west").unwrap_err().contains("not an agent certificate"));
        let w = cert(&["*.agent.drcut.internal"]);
        assert!(check_agent_region(&w, "eu-west").unwrap_err().contains("wildcard"));
        // A region that is not a DNS label can never be in a certificate.
        assert!(check_agent_region(&c, "eu west").is_err());
    }

    #[test]
    fn garbage_is_no_identity() {
        let junk = CertificateDer::from(vec![1, 2, 3]);
        assert!(!is_node_cert(&junk));
        assert!(check_agent_region(&junk, "eu-west").is_err());
    }

    #[test]
    fn load_names_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let e = Material::load(&p("ca.pem"), &p("c.pem"), &p("k.pem")).err().unwrap();
        assert_eq!(e.field, "tls.ca");
        assert!(e.message.contains("ca.pem: cannot read"), "{}", e.message);
        std::fs::write(p("ca.pem"), "not pem").unwrap();
        std::fs::write(p("c.pem"), "x").unwrap();
        std::fs::write(p("k.pem"), "x").unwrap();
        let e = Material::load(&p("ca.pem"), &p("c.pem"), &p("k.pem")).err().unwrap();
        assert_eq!(e.field, "tls.ca");
        assert!(e.message.contains("no CERTIFICATE"), "{}", e.message);
    }

    /// Minimal DER writer for the unit tests' certificates (names only; never verified).
    mod der {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            let n = body.len();
            if n < 128 {
                out.push(n as u8);
            } else if n < 256 {
                out.extend([0x81, n as u8]);
            } else {
                out.extend([0x82, (n >> 8) as u8, n as u8]);
            }
            out.extend_from_slice(body);
            out
        }
        fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
            tlv(0x30, &parts.concat())
        }
        fn oid(bytes: &[u8]) -> Vec<u8> {
            tlv(0x06, bytes)
        }
        fn name(cn: &str) -> Vec<u8> {
            // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String } } }
            seq(&[tlv(0x31, &seq(&[oid(&[0x55, 0x04, 0x03]), tlv(0x0c, cn.as_bytes())]))])
        }
        fn time(s: &str) -> Vec<u8> {
            tlv(0x17, s.as_bytes())
        }

        /// A structurally valid X.509 v3 certificate with these DNS SANs (bogus signature).
        pub fn self_signed_with_dns_names(names: &[&str]) -> Vec<u8> {
            let ed25519 = seq(&[oid(&[0x2b, 0x65, 0x70])]);
            let sans: Vec<u8> = names.iter().flat_map(|n| tlv(0x82, n.as_bytes())).collect();
            let san_ext = seq(&[oid(&[0x55, 0x1d, 0x11]), tlv(0x04, &tlv(0x30, &sans))]);
            let tbs = seq(&[
                tlv(0xa0, &tlv(0x02, &[2])),
                tlv(0x02, &[1]),
                ed25519.clone(),
                name("test"),
                seq(&[time("200101000000Z"), time("491231235959Z")]),
                name("test"),
                seq(&[ed25519.clone(), tlv(0x03, &[[0u8].as_slice(), &[7u8; 32]].concat())]),
                tlv(0xa3, &seq(&[san_ext])),
            ]);
            seq(&[tbs, ed25519, tlv(0x03, &[[0u8].as_slice(), &[0u8; 64]].concat())])
        }
    }

    /// A CA and a leaf it signed, valid until `until` (RFC 3339), written as PEM files.
    fn chain_until(dir: &Path, until: &str) -> Material {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf = CertificateParams::new(vec![NODE_NAME.to_string()]).unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let t = humantime::parse_rfc3339(until).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
        leaf.not_after = rcgen::date_time_ymd(1970, 1, 1) + t;
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let (ca_f, cert_f, key_f) = (dir.join("ca.pem"), dir.join("c.pem"), dir.join("c.key"));
        std::fs::write(&ca_f, issuer.pem()).unwrap();
        std::fs::write(&cert_f, cert.pem()).unwrap();
        std::fs::write(&key_f, key.serialize_pem()).unwrap();
        Material::load(&ca_f, &cert_f, &key_f).unwrap()
    }

    #[test]
    fn last_valid_second_bisects_to_the_second() {
        let now = rustls::pki_types::UnixTime::now().as_secs();
        let until = now + 86_400 * 400 + 17;
        assert_eq!(last_valid_second(|t| t.as_secs() <= until), Some(until));
        assert_eq!(last_valid_second(|t| t.as_secs() < now), None);
        assert_eq!(last_valid_second(|_| true), Some(253_402_300_799));
    }

    #[test]
    fn valid_until_finds_the_expiry_to_the_second() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let m = chain_until(dir.path(), "2031-05-06T07:08:09Z");
        assert_eq!(m.valid_until().map(rfc3339).as_deref(), Some("2031-05-06T07:08:09Z"));
    }
}
