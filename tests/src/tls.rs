//! A throwaway PKI for mTLS tests, generated at test time with rcgen: a CA, node certificates
//! (`node.drcut.internal` plus the node's IP), agent certificates (`REGION.agent.drcut.internal`)
//! and client certificates, written as PEM files the processes read.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The DNS name every node certificate carries (the coordinator's `tls::NODE_NAME`).
pub const NODE_NAME: &str = "node.drcut.internal";

/// A certificate authority that signs test certificates.
pub struct TestCa {
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// The certificate's serial number (what a revocation list names).
    pub serial: u64,
}

/// Where a holder's CA, certificate and key files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA it trusts.
    pub ca: PathBuf,
    /// Its certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The revocation lists it checks client certificates against (nodes only), if any.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// The `tls:` section of a node or agent config, indented for the top level.
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "tls:\n  ca: {:?}\n  cert: {:?}\n  key: {:?}\n",
            self.ca.display().to_string(),
            self.cert.display().to_string(),
            self.key.display().to_string()
        );
        if let Some(crl) = &self.crl {
            y.push_str(&format!("  crl: {:?}\n", crl.display().to_string()));
        }
        y
    }

    /// `--ca F --cert F --key F` for drctl.
    pub fn drctl_args(&self) -> Vec<String> {
        [("--ca", &self.ca), ("--cert", &self.cert), ("--key", &self.key)]
            .into_iter()
            .flat_map(|(flag, p)| [flag.to_string(), p.display().to_string()])
            .collect()
    }

    /// A tonic client config presenting this certificate and verifying nodes against the CA.
    pub fn client_config(&self) -> Result<ClientTlsConfig> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .domain_name(NODE_NAME))
    }
}

impl TestCa {
    /// A new CA named `name` (its common name).
    pub fn new(name: &str) -> Result<Self> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
        Ok(TestCa { name: name.to_string(), issuer })
    }

    /// The CA certificate.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `dns` names and `ips`, usable as a client's, and as a server's
    /// too when `server`.
    pub fn issue(&self, cn: &str, dns: &[String], ips: &[IpAddr], server: bool) -> Result<CertKey> {
        let mut p = CertificateParams::new(dns.to_vec())?;
        p.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = true;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        // Unique within the process, which is all a test CA ever signs for.
        static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);
        let serial = NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        p.serial_number = Some(serial.into());
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial })
    }

    /// A coordinator node's certificate, served at `ip`.
    pub fn node(&self, id: u64, ip: IpAddr) -> Result<CertKey> {
        self.issue(&format!("node-{id}"), &[NODE_NAME.to_string()], &[ip], true)
    }

    /// The agent certificate of `region`.
    pub fn agent(&self, region: &str) -> Result<CertKey> {
        self.issue(&format!("agent {region}"), &[format!("{region}.agent.drcut.internal")], &[], false)
    }

    /// An operator's or a tool's client certificate.
    pub fn client(&self, name: &str) -> Result<CertKey> {
        self.issue(name, &[format!("{name}.clients.drcut.internal")], &[], false)
    }

    /// A revocation list of this CA naming `serials` (PEM; valid from 2025 to 2035).
    pub fn crl(&self, serials: &[u64]) -> Result<String> {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2035, 1, 1),
            crl_number: (serials.len() as u64 + 1).into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Writes `ck` and this CA into `dir` as `NAME.pem`, `NAME.key` and `NAME-ca.pem`.
    pub fn write(&self, dir: &Path, name: &str, ck: &CertKey) -> Result<TlsFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = TlsFiles {
            ca: dir.join(format!("{}-ca.pem", self.name)),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            crl: None,
        };
        std::fs::write(&files.ca, self.ca_pem())?;
        std::fs::write(&files.cert, &ck.cert_pem)?;
        std::fs::write(&files.key, &ck.key_pem)?;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_files() {
        let ca = TestCa::new("unit").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = ca.write(dir.path(), "node-1", &ca.node(1, "127.0.0.1".parse().unwrap()).unwrap()).unwrap();
        assert!(std::fs::read_to_string(&f.ca).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(std::fs::read_to_string(&f.key).unwrap().contains("PRIVATE KEY"));
        assert!(f.yaml().contains("  cert: "), "{}", f.yaml());
        assert_eq!(f.drctl_args().len(), 6);
    }
}
