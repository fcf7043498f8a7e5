//! API tokens for tests: a principals file with the principals a test names, and requests that
//! carry a token.

use std::fmt::Write as _;

use drcut_coordinator::auth::token_hash;
use rand::Rng;

/// The principal the harness itself acts as on a cluster with authentication (admin and
/// operator: it adds regions, applies playbooks and drills and starts drills;
/// reads are open to every role).
pub const HARNESS: &str = "drcut-tests";

/// One principal and its (single) token.
#[derive(Debug, Clone)]
pub struct TestPrincipal {
    /// Name.
    pub name: String,
    /// Roles as written in the file.
    pub roles: Vec<String>,
    /// Region scope (empty: all).
    pub regions: Vec<String>,
    /// The token in clear (the file holds its SHA-256).
    pub token: String,
    /// RFC 3339 expiry, if any.
    pub expires: Option<String>,
    /// Client-certificate names that stand for it.
    pub certificates: Vec<String>,
}

/// The principals of a test cluster.
#[derive(Debug, Clone, Default)]
pub struct TestPrincipals {
    /// In file order.
    pub list: Vec<TestPrincipal>,
}

/// A fresh random token in `drctl token new`'s format.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("drcut_{hex}")
}

impl TestPrincipals {
    /// No principals yet.
    pub fn new() -> Self {
        TestPrincipals::default()
    }

    /// Adds `name` with `roles`, scoped to `regions` (empty: all), with a fresh token.
    pub fn add(self, name: &str, roles: &[&str], regions: &[&str]) -> Self {
        self.add_token(name, roles, regions, None)
    }

    /// Adds `name` whose only token expired long ago.
    pub fn add_expired(self, name: &str, roles: &[&str]) -> Self {
        self.add_token(name, roles, &[], Some("2001-01-01T00:00:00Z"))
    }

    fn add_token(mut self, name: &str, roles: &[&str], regions: &[&str], expires: Option<&str>) -> Self {
        self.list.push(TestPrincipal {
            name: name.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            token: random_token(),
            expires: expires.map(str::to_string),
            certificates: Vec::new(),
        });
        self
    }

    /// Adds `name`, authenticated only by client certificates carrying one of `certificates`
    /// (no token).
    pub fn add_certificates(mut self, name: &str, roles: &[&str], certificates: &[&str]) -> Self {
        self.list.push(TestPrincipal {
            name: name.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            regions: Vec::new(),
            token: String::new(),
            expires: None,
            certificates: certificates.iter().map(|c| c.to_string()).collect(),
        });
        self
    }

    /// The token of `name` (panics for a name the test never added: a bug in the test).
    pub fn token(&self, name: &str) -> &str {
        &self.list.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no test principal {name}")).token
    }

    /// The principal `name`.
    pub fn get(&self, name: &str) -> &TestPrincipal {
        self.list.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no test principal {name}"))
    }

    /// The principals file text.
    pub fn yaml(&self) -> String {
        let mut y = String::from("principals:\n");
        for p in &self.list {
            writeln!(y, "  - name: {}\n    roles: [{}]", p.name, p.roles.join(", ")).unwrap();
            if !p.regions.is_empty() {
                writeln!(y, "    regions: [{}]", p.regions.join(", ")).unwrap();
            }
            if !p.token.is_empty() {
                writeln!(y, "    tokens:\n      - sha256: {}", token_hash(&p.token)).unwrap();
                if let Some(e) = &p.expires {
                    writeln!(y, "        expires: {e}").unwrap();
                }
            }
            if !p.certificates.is_empty() {
                writeln!(y, "    certificates: [{}]", p.certificates.join(", ")).unwrap();
            }
        }
        y
    }
}

/// `msg` as a request carrying `token` as `authorization: Bearer`.
pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("tokens are header-safe"));
    r
}
