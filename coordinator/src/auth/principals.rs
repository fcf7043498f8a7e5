//! The principals file: who may call, with which roles, by which API tokens (stored only as
//! SHA-256 hashes, so the file itself grants nothing to whoever reads it).

use super::roles::Role;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::time::SystemTime;

/// A refused principals file: names the file, the field and what is wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{file}: {field}: {message}")]
pub struct PrincipalsError {
    /// The file.
    pub file: String,
    /// Dotted path of the offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    principals: Vec<RawPrincipal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    roles: Vec<Role>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    /// Client-certificate DNS names (SANs) that stand for this principal on gRPC.
    #[serde(default)]
    certificates: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    sha256: String,
    #[serde(default)]
    expires: Option<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Unique name; it is the actor in the audit log.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// The regions it may act on; empty = every region.
    pub regions: BTreeSet<String>,
    /// What it proved itself with (`None` in open mode): a long-lived stream checks it again,
    /// so revoking or expiring it ends the stream.
    pub credential: Option<Credential>,
}

/// How a principal authenticated.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// An API token, by its SHA-256.
    Token([u8; 32]),
    /// A client certificate (verified against the cluster CA at the handshake) carrying this
    /// DNS name.
    Certificate(String),
}

impl Principal {
    /// Whether it may act on `region`.
    pub fn may_act_on(&self, region: &str) -> bool {
        self.regions.is_empty() || self.regions.contains(region)
    }
}

#[derive(Debug, Clone)]
struct Token {
    hash: [u8; 32],
    expires: Option<SystemTime>,
}

/// A validated principals file.
#[derive(Debug, Clone, Default)]
pub struct Principals {
    entries: Vec<(Principal, Vec<Token>)>,
    /// Client-certificate names and the index of the entry each stands for.
    certificates: Vec<(String, usize)>,
}

/// Why a token was not accepted (said to the caller without echoing the token).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenRefusal {
    /// No principal has it.
    Unknown,
    /// It belonged to this principal and expired at this time (RFC 3339).
    Expired {
        /// Whose token.
        principal: String,
        /// When it expired.
        at: String,
    },
}

/// Checks a client-certificate name in a principals file: a plain DNS name, not a node's or an
/// agent's (machine identities never act on `Control`).
fn certificate_name(name: &str) -> Result<(), String> {
    if name.contains('*') {
        return Err(format!("{name:?}: wildcards are refused: one certificate name, one principal"));
    }
    rustls::pki_types::DnsName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a DNS name (the SAN the client certificate carries)"))?;
    let lower = name.to_ascii_lowercase();
    if lower == crate::tls::NODE_NAME || lower.ends_with(crate::tls::AGENT_SUFFIX) {
        return Err(format!("{name:?} is a node or agent identity; give clients names of their own"));
    }
    Ok(())
}

/// The SHA-256 of a token, as hex (what a principals file stores).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Principals {
    /// Parses and validates a principals file; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Principals, PrincipalsError> {
        let err = |field: String, message: String| PrincipalsError { file: file.to_string(), field, message };
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let field = msg.split_once(": ").map(|(p, _)| p).filter(|p| !p.contains(' ')).unwrap_or("(file)");
            err(field.to_string(), msg.clone())
        })?;
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        let mut entries = Vec::new();
        let mut certificates = Vec::new();
        for (i, p) in raw.principals.into_iter().enumerate() {
            let f = format!("principals[{i}]");
            crate::state::validate_name(&format!("{f}.name"), &p.name).map_err(|m| err(format!("{f}.name"), m))?;
            if !names.insert(p.name.clone()) {
                return Err(err(format!("{f}.name"), format!("{:?} appears more than once", p.name)));
            }
            if p.roles.is_empty() {
                return Err(err(format!("{f}.roles"), "empty: give at least one role".into()));
            }
            if p.roles.iter().any(|r| matches!(r, Role::Agent | Role::Node)) {
                return Err(err(
                    format!("{f}.roles"),
                    "agent and node identities come from certificates, not tokens".into(),
                ));
            }
            if p.tokens.is_empty() && p.certificates.is_empty() {
                return Err(err(
                    format!("{f}.tokens"),
                    "empty: give at least one token hash (or a client certificate name under certificates)".into(),
                ));
            }
            for (j, c) in p.certificates.iter().enumerate() {
                let cf = format!("{f}.certificates[{j}]");
                certificate_name(c).map_err(|m| err(cf.clone(), m))?;
                if let Some((_, other)) =
                    certificates.iter().find(|(n, _): &&(String, usize)| n.eq_ignore_ascii_case(c))
                {
                    return Err(err(cf, format!("{c:?} already stands for principals[{other}]")));
                }
                certificates.push((c.to_ascii_lowercase(), entries.len()));
            }
            let mut tokens = Vec::new();
            for (j, t) in p.tokens.iter().enumerate() {
                let tf = format!("{f}.tokens[{j}]");
                let bytes = hex::decode(&t.sha256).ok().filter(|b| b.len() == 32).ok_or_else(|| {
                    err(
                        format!("{tf}.sha256"),
                        "not 64 hex digits: store the SHA-256 of the token (`drctl token new` prints it), \
                         never the token itself"
                            .into(),
                    )
                })?;
                let hash: [u8; 32] = bytes.try_into().expect("length checked");
                if !hashes.insert(hash) {
                    return Err(err(format!("{tf}.sha256"), "the same token is listed twice".into()));
                }
                let expires = match &t.expires {
                    None => None,
                    Some(s) => Some(
                        humantime::parse_rfc3339_weak(s)
                            .map_err(|e| err(format!("{tf}.expires"), format!("{s:?} is not an RFC 3339 time: {e}")))?,
                    ),
                };
                tokens.push(Token { hash, expires });
            }
            let regions: BTreeSet<String> = p.regions.into_iter().collect();
            entries.push((Principal { name: p.name, roles: p.roles, regions, credential: None }, tokens));
        }
        Ok(Principals { entries, certificates })
    }

    /// The principal a bearer token belongs to, at time `now`.
    pub fn authenticate(&self, token: &str, now: SystemTime) -> Result<Principal, TokenRefusal> {
        self.authenticate_hash(&Sha256::digest(token.as_bytes()).into(), now)
    }

    /// The principal the token with SHA-256 `h` belongs to, at time `now` (what a stream opened
    /// with that token checks again later).
    pub fn authenticate_hash(&self, h: &[u8; 32], now: SystemTime) -> Result<Principal, TokenRefusal> {
        for (p, tokens) in &self.entries {
            // Constant-time comparison: a timing side channel on the hash would still leak nothing
            // useful, but comparing every byte costs nothing.
            if let Some(t) = tokens.iter().find(|t| t.hash.iter().zip(h.iter()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0)
            {
                if let Some(exp) = t.expires
                    && exp <= now
                {
                    let at = humantime::format_rfc3339_seconds(exp).to_string();
                    return Err(TokenRefusal::Expired { principal: p.name.clone(), at });
                }
                return Ok(Principal { credential: Some(Credential::Token(*h)), ..p.clone() });
            }
        }
        Err(TokenRefusal::Unknown)
    }

    /// The principal a verified client certificate stands for: the first listed name the
    /// certificate carries exactly (wildcard SANs never match, so one certificate cannot stand
    /// for every principal).
    pub fn authenticate_certificate(&self, cert: &rustls::pki_types::CertificateDer<'_>) -> Option<Principal> {
        let names = crate::tls::exact_dns_names(cert);
        let (name, i) = self.certificates.iter().find(|(n, _)| names.iter().any(|c| c.eq_ignore_ascii_case(n)))?;
        Some(Principal { credential: Some(Credential::Certificate(name.clone())), ..self.entries[*i].0.clone() })
    }

    /// The principal client-certificate name `name` stands for now, if any.
    pub fn certificate_holder(&self, name: &str) -> Option<&Principal> {
        self.certificates.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, i)| &self.entries[*i].0)
    }

    /// Number of principals.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file names nobody.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file(expires: &str) -> String {
        format!(
            "principals:\n  - name: alice\n    roles: [operator]\n    regions: [eu-west]\n    tokens:\n      - sha256: {}\n{expires}\
             \n  - name: bob\n    roles: [approver]\n    tokens: [{{ sha256: {} }}]\n",
            token_hash("alice-secret"),
            token_hash("bob-secret")
        )
    }

    #[test]
    fn tokens_authenticate_their_principal_and_nothing_else() {
        let p = Principals::parse("p.yaml", &file("")).unwrap();
        let now = SystemTime::now();
        let a = p.authenticate("alice-secret", now).unwrap();
        assert_eq!((a.name.as_str(), a.roles.clone()), ("alice", vec![Role::Operator]));
        assert!(a.may_act_on("eu-west") && !a.may_act_on("eu-central"));
        assert_eq!(p.authenticate("bob-secret", now).unwrap().name, "bob");
        assert_eq!(p.authenticate("alice-secreT", now), Err(TokenRefusal::Unknown));
    }

    #[test]
    fn an_expired_token_is_refused_naming_when() {
        let p = Principals::parse("p.yaml", &file("        expires: 2026-01-01T00:00:00Z")).unwrap();
        let later = humantime::parse_rfc3339("2026-06-01T00:00:00Z").unwrap();
        let r = p.authenticate("alice-secret", later).unwrap_err();
        assert_eq!(r, TokenRefusal::Expired { principal: "alice".into(), at: "2026-01-01T00:00:00Z".into() });
        assert!(p.authenticate("alice-secret", later - Duration::from_secs(200 * 86400)).is_ok());
    }

    #[test]
    fn the_documented_example_loads() {
        let text = include_str!("../../../docs/examples/principals.yaml");
        let p = Principals::parse("principals.yaml", text).unwrap();
        let now = humantime::parse_rfc3339("2026-06-01T00:00:00Z").unwrap();
        let d = p.authenticate("drcut_EXAMPLE_dave_not_a_real_token", now).unwrap();
        assert_eq!((d.name.as_str(), d.may_act_on("eu-central")), ("dave", false));
    }

    #[test]
    fn client_certificate_names_are_plain_unique_and_not_machines() {
        let one =
            |names: &str| format!("principals:\n  - name: ci\n    roles: [operator]\n    certificates: {names}\n");
        let p = Principals::parse("p.yaml", &one("[ci.clients.drcut.internal]")).unwrap();
        assert_eq!(p.certificate_holder("CI.clients.drcut.internal").map(|p| p.name.as_str()), Some("ci"));
        assert!(p.certificate_holder("other.clients.drcut.internal").is_none());
        let bad = |names: &str| Principals::parse("p.yaml", &one(names)).unwrap_err();
        for (names, says) in [
            ("['*.clients.drcut.internal']", "wildcards are refused"),
            ("[node.drcut.internal]", "node or agent identity"),
            ("[eu-west.agent.drcut.internal]", "node or agent identity"),
            ("['not a name']", "not a DNS name"),
            ("[a.example, A.example]", "already stands for principals[0]"),
        ] {
            let e = bad(names);
            assert!(e.field.starts_with("principals[0].certificates["), "{names}: {e}");
            assert!(e.message.contains(says), "{names}: {e}");
        }
        let none = "principals:\n  - name: ci\n    roles: [operator]\n";
        assert_eq!(Principals::parse("p.yaml", none).unwrap_err().field, "principals[0].tokens");
    }

    #[test]
    fn bad_files_name_the_field() {
        let field = |t: &str| Principals::parse("p.yaml", t).unwrap_err().field;
        let good = file("");
        assert_eq!(field(&good.replace("[operator]", "[]")), "principals[0].roles");
        assert_eq!(field(&good.replace("[approver]", "[node]")), "principals[1].roles");
        assert_eq!(field(&good.replace("name: bob", "name: alice")), "principals[1].name");
        assert_eq!(field(&good.replace(&token_hash("bob-secret"), "bob-secret")), "principals[1].tokens[0].sha256");
        assert_eq!(
            field(&good.replace(&token_hash("bob-secret"), &token_hash("alice-secret"))),
            "principals[1].tokens[0].sha256"
        );
        assert_eq!(field(&file("        expires: soon")), "principals[0].tokens[0].expires");
        assert!(Principals::parse("p.yaml", &good.replace("roles: [approver]", "roles: [god]")).is_err());
    }
}
