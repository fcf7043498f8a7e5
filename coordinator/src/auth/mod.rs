//! Who is calling and what they may do: API tokens (hashed at rest) for people and automation,
//! certificates for agents and nodes, one role table for gRPC and the console, and an audit
//! record for every refusal.

pub mod layer;
pub mod principals;
pub mod rate;
pub mod roles;

pub use layer::AuthLayer;
pub use principals::{Credential, Principal, Principals, PrincipalsError, TokenRefusal, token_hash};
pub use roles::{Role, required_role};

use crate::command::Command;
use crate::config::{AuthConfig, RateLimitConfig};
use crate::node::{AppRef, LeaderRequest};
use rate::{AuditThrottle, AuditVerdict, Buckets};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// Failed authentications a peer IP may make at once, then per second: a person mistyping is
/// never slowed, a token guesser gets a handful of tries a second (2^256 tokens).
const FAILURE_BURST: u32 = 20;
/// See [`FAILURE_BURST`].
const FAILURES_PER_SECOND: u32 = 2;
/// Denial records per node per window; beyond, one summary record counts the rest.
const AUDITED_DENIALS: u32 = 10;
/// See [`AUDITED_DENIALS`].
const AUDIT_WINDOW_MS: u64 = 1000;

/// The mutable side of rate limiting.
struct Limits {
    /// Calls per principal.
    calls: Buckets,
    /// Failed authentications per peer IP.
    failures: Buckets,
    /// Denials written to the audit chain.
    audit: AuditThrottle,
}

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
    /// The rate limits and the denial-audit throttle.
    limits: Mutex<Limits>,
    /// The limits' clock (monotonic: a wall-clock step must not refill or drain buckets).
    epoch: Instant,
    /// The configured per-principal limit (for messages).
    rate: RateLimitConfig,
}

impl Auth {
    fn new(file: Option<PathBuf>, loaded: (Option<SystemTime>, Principals), rate: RateLimitConfig) -> Auth {
        Auth {
            file,
            loaded: Mutex::new(loaded),
            limits: Mutex::new(Limits {
                calls: Buckets::new(rate.per_second, rate.burst),
                failures: Buckets::new(FAILURES_PER_SECOND, FAILURE_BURST),
                audit: AuditThrottle::new(AUDITED_DENIALS, AUDIT_WINDOW_MS),
            }),
            epoch: Instant::now(),
            rate,
        }
    }

    /// Open mode: nothing is checked (and nothing rate-limited: open mode has no identities to
    /// key a limit on, only names callers declare).
    pub fn open() -> Auth {
        Auth::new(None, (None, Principals::default()), RateLimitConfig::default())
    }

    /// Tokens from `file`, validated now (a node never starts with a bad principals file), with
    /// the default rate limit.
    pub fn from_file(file: PathBuf) -> Result<Auth, PrincipalsError> {
        let loaded = load(&file)?;
        Ok(Auth::new(Some(file), loaded, RateLimitConfig::default()))
    }

    /// From the `auth:` section of the coordinator config.
    pub fn from_config(c: &AuthConfig) -> Result<Auth, PrincipalsError> {
        let loaded = load(&c.principals_file)?;
        Ok(Auth::new(Some(c.principals_file.clone()), loaded, c.rate_limit))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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

    /// The principal behind a bearer token, or else behind the verified client certificate
    /// `cert` (`declared` names the caller in open mode). A token wins over a certificate: a
    /// tool holding both acts as the token says.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        declared: Option<&str>,
        cert: Option<&rustls::pki_types::CertificateDer<'_>>,
    ) -> Result<Principal, Denial> {
        if !self.enabled() {
            let name = declared.filter(|d| !d.is_empty()).unwrap_or("anonymous").to_string();
            let roles = vec![Role::Viewer, Role::Operator, Role::Approver, Role::Admin];
            return Ok(Principal { name, roles, regions: Default::default(), credential: None });
        }
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            if let Some(p) = cert.and_then(|c| self.principals().authenticate_certificate(c)) {
                return Ok(p);
            }
            let message = match cert {
                None => "no API token: send `authorization: Bearer <token>` (drctl --token or DRCUT_TOKEN)".into(),
                Some(c) => format!(
                    "no API token, and the client certificate ({}) stands for no principal: send \
                     `authorization: Bearer <token>`, or list the certificate's name under a principal's certificates",
                    crate::tls::exact_dns_names(c).join(", ")
                ),
            };
            return Err(Denial { code: tonic::Code::Unauthenticated, who: "no token".into(), message });
        };
        self.principals()
            .authenticate(token, SystemTime::now())
            .map_err(|r| refusal(r, "is not known to this cluster (revoked, mistyped or for another cluster)"))
    }

    /// Whether `p`, authenticated a while ago, may still make `call`: its token is still listed
    /// for it and unexpired (or its certificate name still stands for it), and it still holds
    /// the role (the principals file may have changed since). Open mode always may.
    pub fn recheck(&self, p: &Principal, call: &str) -> Result<(), Denial> {
        let Some(credential) = p.credential.as_ref().filter(|_| self.enabled()) else { return Ok(()) };
        let principals = self.principals();
        let fresh = match credential {
            Credential::Token(h) => principals
                .authenticate_hash(h, SystemTime::now())
                .map_err(|r| Denial { who: p.name.clone(), ..refusal(r, &format!("of {} was revoked", p.name)) })?,
            Credential::Certificate(name) => principals.certificate_holder(name).cloned().ok_or_else(|| Denial {
                code: tonic::Code::Unauthenticated,
                who: p.name.clone(),
                message: format!("the client certificate name {name} no longer stands for {}", p.name),
            })?,
        };
        if fresh.name != p.name {
            return Err(Denial {
                code: tonic::Code::Unauthenticated,
                who: p.name.clone(),
                message: format!("the credential of {} now belongs to {}; open the stream again", p.name, fresh.name),
            });
        }
        self.authorize(&fresh, call)
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
        if !self.enabled() {
            return Ok(());
        }
        let now = self.now_ms();
        let verdict = self.limits.lock().expect("limits lock").calls.take(who, now);
        verdict.map_err(|retry_ms| Denial {
            code: tonic::Code::ResourceExhausted,
            who: who.to_string(),
            message: format!(
                "rate limit: {who} may make {} calls per second (bursts of {}); retry in {retry_ms} ms",
                self.rate.per_second, self.rate.burst
            ),
        })
    }

    /// Refuses a peer that failed to authenticate too often lately (token guessing), before its
    /// token is even looked at.
    pub fn admit_peer(&self, peer: Option<std::net::IpAddr>) -> Result<(), Denial> {
        let Some(ip) = peer.filter(|_| self.enabled()) else { return Ok(()) };
        let now = self.now_ms();
        if self.limits.lock().expect("limits lock").failures.has_room(&ip.to_string(), now) {
            return Ok(());
        }
        Err(Denial {
            code: tonic::Code::ResourceExhausted,
            who: ip.to_string(),
            message: format!(
                "rate limit: too many failed authentications from {ip} ({FAILURES_PER_SECOND} per second, \
                 bursts of {FAILURE_BURST}); check the token and retry later"
            ),
        })
    }

    /// Counts a failed authentication against `peer` (see [`Auth::admit_peer`]).
    pub fn note_failure(&self, peer: Option<std::net::IpAddr>) {
        if let Some(ip) = peer {
            let now = self.now_ms();
            let _ = self.limits.lock().expect("limits lock").failures.take(&ip.to_string(), now);
        }
    }

    fn note_denial(&self) -> AuditVerdict {
        let now = self.now_ms();
        self.limits.lock().expect("limits lock").audit.note(now)
    }

    fn take_suppressed(&self) -> u64 {
        self.limits.lock().expect("limits lock").audit.take_suppressed()
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

/// How often a long-lived stream checks again the token that opened it.
pub const STREAM_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The right to keep a server stream (WatchRun, WatchHealth, the console's live view) open: the
/// token that opened it is checked again every [`STREAM_RECHECK`], so a revoked or expired token,
/// or a role taken away, ends the stream (audited) instead of leaving it open for as long as
/// the client likes.
pub struct StreamGrant {
    app: AppRef,
    principal: Option<Principal>,
    call: &'static str,
    next: tokio::time::Instant,
}

impl StreamGrant {
    /// The grant of `principal` (the one the auth layer admitted) for `call`.
    pub fn new(app: &AppRef, principal: Option<Principal>, call: &'static str) -> StreamGrant {
        let principal = principal.filter(|p| p.credential.is_some() && app.auth.enabled());
        // Nothing to check again (open mode): never due.
        let wait = if principal.is_some() { STREAM_RECHECK } else { std::time::Duration::from_secs(365 * 86400) };
        StreamGrant { app: app.clone(), principal, call, next: tokio::time::Instant::now() + wait }
    }

    /// When the next check is due: a stream waiting for news wakes up then.
    pub fn due(&self) -> tokio::time::Instant {
        self.next
    }

    /// Checks again when due. `Err` is the status to end the stream with; the refusal is audited.
    pub fn check(&mut self) -> Result<(), tonic::Status> {
        let now = tokio::time::Instant::now();
        let Some(p) = self.principal.as_ref().filter(|_| now >= self.next) else { return Ok(()) };
        self.next = now + STREAM_RECHECK;
        self.app.auth.recheck(p, self.call).map_err(|d| {
            audit_denied(&self.app, self.call, &d, None);
            let mut d = d;
            d.message = format!("{}: stream ended: {}", self.call, d.message);
            d.to_status()
        })
    }
}

/// What a caller is told about a token that is not accepted; `unknown` completes "the API token
/// …" for a token no principal lists.
fn refusal(r: TokenRefusal, unknown: &str) -> Denial {
    match r {
        TokenRefusal::Unknown => Denial {
            code: tonic::Code::Unauthenticated,
            who: "unknown token".into(),
            message: format!("the API token {unknown}"),
        },
        TokenRefusal::Expired { principal, at } => Denial {
            code: tonic::Code::Unauthenticated,
            message: format!("the API token of {principal} expired at {at}; ask an admin for a new one"),
            who: principal,
        },
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
/// At most [`AUDITED_DENIALS`] records a second per node: beyond, denials are counted and one
/// `auth.denied.suppressed` record with the count follows at the end of the window.
pub fn audit_denied(app: &AppRef, call: &str, d: &Denial, peer: Option<std::net::SocketAddr>) {
    match app.auth.note_denial() {
        AuditVerdict::Record => {}
        AuditVerdict::Suppress { first } => {
            tracing::debug!(call, who = %d.who, code = ?d.code, "denied (not audited: too many denials)");
            if first {
                let app = app.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(AUDIT_WINDOW_MS)).await;
                    let count = app.auth.take_suppressed();
                    tracing::warn!(count, "denied calls not audited one by one (more than {AUDITED_DENIALS} a second)");
                    let details = serde_json::json!({ "count": count, "window_ms": AUDIT_WINDOW_MS,
                        "note": format!("more than {AUDITED_DENIALS} denied calls a second on node {}: \
                                         counted, not recorded one by one", app.id) });
                    record(&app, "auth", "auth.denied.suppressed", details).await;
                });
            }
            return;
        }
    }
    tracing::warn!(call, who = %d.who, code = ?d.code, peer = ?peer, "denied: {}", d.message);
    let details = serde_json::json!({
        "call": call,
        "who": d.who,
        "code": format!("{:?}", d.code),
        "reason": d.message,
        "peer": peer.map(|p| p.to_string()).unwrap_or_default(),
    });
    let app = app.clone();
    let who = d.who.clone();
    tokio::spawn(async move { record(&app, &who, "auth.denied", details).await });
}

/// Appends an audit record by `actor` through the leader (logged, not retried, when none answers).
pub(crate) async fn record(app: &AppRef, actor: &str, action: &str, details: serde_json::Value) {
    let req = crate::command::Request {
        request_id: String::new(),
        actor: actor.to_string(),
        at_ms: 0,
        cmd: Command::Record { action: action.into(), details },
    };
    if let Err(e) = app.leader_call(LeaderRequest::Write(req), false).await {
        tracing::warn!("{action} not audited (no leader reachable): {}", e.message());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn file(entries: &[(&str, &str, Option<&str>)]) -> String {
        let mut y = String::from("principals:\n");
        for (name, token, expires) in entries {
            y.push_str(&format!(
                "  - name: {name}\n    roles: [viewer]\n    tokens:\n      - sha256: {}\n",
                token_hash(token)
            ));
            if let Some(e) = expires {
                y.push_str(&format!("        expires: {e}\n"));
            }
        }
        y
    }

    /// Rewrites the file so its modification time surely changes (the reload keys on it).
    fn rewrite(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(later).unwrap();
    }

    #[test]
    fn a_stream_grant_holds_until_its_token_is_revoked_expires_or_moves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("principals.yaml");
        rewrite(&path, &file(&[("alice", "t-alice", None), ("bob", "t-bob", None)]));
        let auth = Auth::from_file(path.clone()).unwrap();
        let alice = auth.authenticate(Some("t-alice"), None, None).unwrap();
        assert_eq!(alice.credential, Some(Credential::Token(sha2::Sha256::digest("t-alice").into())));
        assert_eq!(auth.recheck(&alice, "WatchRun"), Ok(()));

        rewrite(&path, &file(&[("alice", "t-alice", Some("2001-01-01T00:00:00Z")), ("bob", "t-bob", None)]));
        let d = auth.recheck(&alice, "WatchRun").unwrap_err();
        assert_eq!((d.code, d.who.as_str()), (tonic::Code::Unauthenticated, "alice"));
        assert!(d.message.contains("expired at 2001-01-01T00:00:00Z"), "{d:?}");

        rewrite(&path, &file(&[("bob", "t-bob", None)]));
        let d = auth.recheck(&alice, "WatchHealth").unwrap_err();
        assert_eq!(d.who, "alice");
        assert!(d.message.contains("of alice was revoked"), "{d:?}");

        rewrite(&path, &file(&[("bob", "t-alice", None)]));
        let d = auth.recheck(&alice, "WatchHealth").unwrap_err();
        assert!(d.message.contains("now belongs to bob"), "{d:?}");
    }

    #[test]
    fn open_mode_has_nothing_to_check_again() {
        let auth = Auth::open();
        let p = auth.authenticate(None, Some("ops"), None).unwrap();
        assert_eq!((p.name.as_str(), &p.credential), ("ops", &None));
        assert_eq!(auth.recheck(&p, "WatchRun"), Ok(()));
    }
}
