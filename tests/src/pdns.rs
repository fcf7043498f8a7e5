//! [`Pdns`]: a real PowerDNS Authoritative server on a loopback address, with its SQLite
//! backend, HTTP API and dynamic updates enabled: the DNS that cutover steps rewrite and that
//! tests query to see what clients would be told.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::http_server::http_client;
use crate::pg::{die_with_test, file_tail, free_port};

/// Upper bound for the server to answer its API after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The key the API requires in `X-API-Key`.
const API_KEY: &str = "drcut-test-api-key";

/// Where Debian's pdns-backend-sqlite3 ships the schema (the doc copy is a fallback: minimal
/// images may drop /usr/share/doc).
const SCHEMAS: [&str; 2] = [
    "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql",
    "/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql",
];

/// What to run when a server binary or file is missing.
const INSTALL_HINT: &str = "run scripts/test as root to install pdns-server, pdns-backend-sqlite3 and sqlite3";

/// A running PowerDNS Authoritative server. Dropping it kills the server and deletes its
/// database; if the test panicked, its log tail is printed first.
pub struct Pdns {
    dns_addr: SocketAddr,
    api_url: String,
    http: reqwest::Client,
    resolver: TokioResolver,
    /// Zones created through [`Pdns::create_zone`], to find the zone a record belongs to.
    zones: Mutex<Vec<String>>,
    log: PathBuf,
    child: Option<Child>,
    /// Last, so it is deleted after the server is gone.
    dir: Option<tempfile::TempDir>,
}

impl Pdns {
    /// Starts a server answering DNS on `ip` (UDP and TCP, a free port) with its API on
    /// another free port of `ip`, and waits until the API answers.
    pub async fn start(ip: Ipv4Addr) -> Result<Pdns> {
        crate::init_tracing();
        let started = Instant::now();
        let server = find_program("pdns_server")?;
        let sqlite3 = find_program("sqlite3")?;
        let schema = SCHEMAS
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .with_context(|| format!("PowerDNS SQLite schema not found at {SCHEMAS:?}: {INSTALL_HINT}"))?;

        let dir = tempfile::Builder::new().prefix(&format!("drcut-pdns-{ip}-")).tempdir()?;
        let db = dir.path().join("pdns.sqlite3");
        let out = Command::new(&sqlite3)
            .arg(&db)
            .arg(format!(".read {}", schema.display()))
            .stdin(Stdio::null())
            .output()
            .await
            .context("running sqlite3")?;
        ensure!(
            out.status.success(),
            "creating {} from {} failed: {}",
            db.display(),
            schema.display(),
            String::from_utf8_lossy(&out.stderr)
        );

        let dns_port = free_port(ip, true)?;
        let api_port = loop {
            let p = free_port(ip, false)?;
            if p != dns_port {
                break p;
            }
        };
        let dns_addr = SocketAddr::from((ip, dns_port));
        let api_addr = SocketAddr::from((ip, api_port));
        std::fs::write(dir.path().join("pdns.conf"), config(dir.path(), &db, dns_addr, api_addr))?;

        let log = dir.path().join("pdns.log");
        let mut logf = OpenOptions::new().create(true).append(true).open(&log)?;
        writeln!(logf, "=== harness: starting pdns_server on {dns_addr}, api {api_addr}")?;
        let mut cmd = Command::new(&server);
        cmd.arg(format!("--config-dir={}", dir.path().display()))
            .args(["--daemon=no", "--guardian=no", "--disable-syslog", "--write-pid=no"])
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .kill_on_drop(true);
        die_with_test(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("spawning {}", server.display()))?;
        tracing::info!(pid = child.id(), dns = %dns_addr, api = %api_addr, "pdns_server started");

        let mut pdns = Pdns {
            dns_addr,
            api_url: format!("http://{api_addr}"),
            http: http_client(),
            resolver: resolver(dns_addr)?,
            zones: Mutex::new(Vec::new()),
            log,
            child: Some(child),
            dir: Some(dir),
        };
        pdns.wait_ready().await?;
        tracing::info!(dns = %dns_addr, took = ?started.elapsed(), "pdns_server ready");
        Ok(pdns)
    }

    /// The DNS address (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// The webserver's base URL, `http://IP:PORT` (the API is under `/api/v1`).
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The key the API requires in the `X-API-Key` header.
    pub fn api_key(&self) -> &str {
        API_KEY
    }

    /// The temp dir holding the config, database and log.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until drop").path()
    }

    /// Creates a native zone (e.g. `gslb.example.`) with the default SOA and an NS record.
    pub async fn create_zone(&self, zone: &str) -> Result<()> {
        let zone = fqdn(zone);
        let body = json!({ "name": zone, "kind": "Native", "nameservers": [format!("ns1.{zone}")] });
        self.api(reqwest::Method::POST, "/api/v1/servers/localhost/zones", Some(body), 201)
            .await
            .with_context(|| format!("creating zone {zone}"))?;
        self.zones.lock().unwrap().push(zone.clone());
        tracing::info!(%zone, "pdns zone created");
        Ok(())
    }

    /// Replaces the A RRset of `name` with `ips` (none deletes it), through the API.
    pub async fn set_a(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) -> Result<()> {
        let contents: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        self.set_rrset(name, "A", ttl, &contents).await
    }

    /// Replaces the RRset `name`/`rtype` with records of the given contents in zone-file
    /// syntax (none deletes it), e.g. type `LUA` with
    /// `A "pickwrandom({{90,'192.0.2.1'},{10,'198.51.100.1'}})"`.
    pub async fn set_rrset(&self, name: &str, rtype: &str, ttl: u32, contents: &[String]) -> Result<()> {
        let name = fqdn(name);
        let zone = self.zone_of(&name)?;
        let rrset = if contents.is_empty() {
            json!({ "name": name, "type": rtype, "changetype": "DELETE" })
        } else {
            let records: Vec<_> = contents.iter().map(|c| json!({ "content": c, "disabled": false })).collect();
            json!({ "name": name, "type": rtype, "ttl": ttl, "changetype": "REPLACE", "records": records })
        };
        let path = format!("/api/v1/servers/localhost/zones/{zone}");
        self.api(reqwest::Method::PATCH, &path, Some(json!({ "rrsets": [rrset] })), 204)
            .await
            .with_context(|| format!("setting {name} {rtype} to {contents:?}"))?;
        tracing::info!(%name, rtype, ?contents, ttl, "pdns rrset set");
        Ok(())
    }

    /// The zone as the API returns it (its RRsets, serial, …).
    pub async fn zone(&self, zone: &str) -> Result<serde_json::Value> {
        self.api(reqwest::Method::GET, &format!("/api/v1/servers/localhost/zones/{}", fqdn(zone)), None, 200).await
    }

    /// Asks the server for the A records of `name`, as a client would (no cache, no
    /// recursion); sorted, empty when the name or the RRset does not exist.
    pub async fn query_a(&self, name: &str) -> Result<Vec<Ipv4Addr>> {
        query_a_at(&self.resolver, name).await.with_context(|| format!("at {}", self.dns_addr))
    }

    /// SIGKILLs the server: DNS and API stop answering.
    pub async fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("pdns_server is not running");
        };
        child.start_kill().ok();
        child.wait().await?;
        tracing::info!("pdns_server killed");
        Ok(())
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        format!("----- pdns_server ({}):\n{}\n", self.log.display(), file_tail(&self.log, lines))
    }

    /// Calls the API and checks the status; returns the JSON body (`Null` when empty).
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        expect: u16,
    ) -> Result<serde_json::Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.api_url)).header("X-API-Key", API_KEY);
        if let Some(body) = body {
            // Serialized here: reqwest's `json` feature is not enabled (the agent does not use it).
            req = req.header("Content-Type", "application/json").body(serde_json::to_vec(&body)?);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        ensure!(status.as_u16() == expect, "{method} {path}: HTTP {status} (expected {expect}): {text}");
        if text.trim().is_empty() { Ok(serde_json::Value::Null) } else { Ok(serde_json::from_str(&text)?) }
    }

    /// The longest created zone that `name` is in.
    fn zone_of(&self, name: &str) -> Result<String> {
        let zones = self.zones.lock().unwrap();
        zones
            .iter()
            .filter(|z| name == z.as_str() || name.ends_with(&format!(".{z}")))
            .max_by_key(|z| z.len())
            .cloned()
            .with_context(|| format!("{name} is in no zone created by this test (zones: {zones:?})"))
    }

    /// Waits until the API answers; fails at once, with the log, if the server exits.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("pdns_server exited with {status} while starting\n{}", self.log_tail(30));
            }
            let err = match self.api(reqwest::Method::GET, "/api/v1/servers/localhost", None, 200).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!("pdns_server API not answering after {START_TIMEOUT:?}; last: {err:#}\n{}", self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Pdns {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== drcut-tests: pdns log (test failed)\n{}", self.log_tail(40));
        }
        if let Some(mut child) = self.child.take() {
            child.start_kill().ok();
            for _ in 0..200 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if std::env::var_os("DRCUT_KEEP_TMP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("drcut-tests: kept {}", dir.keep().display());
        }
    }
}

/// The server's config: everything on loopback, nothing cached, so a test sees each change
/// on its next query.
fn config(dir: &Path, db: &Path, dns: SocketAddr, api: SocketAddr) -> String {
    format!(
        "\
launch=gsqlite3
gsqlite3-database={db}
gsqlite3-pragma-synchronous=0
local-address={dns_ip}
local-port={dns_port}
socket-dir={dir}
api=yes
api-key={API_KEY}
webserver=yes
webserver-address={api_ip}
webserver-port={api_port}
webserver-allow-from=127.0.0.0/8
enable-lua-records=yes
dnsupdate=yes
allow-dnsupdate-from=127.0.0.0/8
default-soa-content=ns1.@ hostmaster.@ 0 10800 3600 604800 3600
# No packet, query or negative caching and no zone cache: a change is visible at once.
cache-ttl=0
query-cache-ttl=0
negquery-cache-ttl=0
zone-cache-refresh-interval=0
# No security-status lookups on the internet.
security-poll-suffix=
distributor-threads=1
receiver-threads=1
loglevel=6
",
        db = db.display(),
        dns_ip = dns.ip(),
        dns_port = dns.port(),
        dir = dir.display(),
        api_ip = api.ip(),
        api_port = api.port(),
    )
}

/// The A records of `name` as `resolver` gets them; sorted, empty when there are none.
pub async fn query_a_at(resolver: &TokioResolver, name: &str) -> Result<Vec<Ipv4Addr>> {
    let lookup = match resolver.lookup(fqdn(name).as_str(), RecordType::A).await {
        Ok(l) => l,
        Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("querying {name} A")),
    };
    let mut ips: Vec<Ipv4Addr> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    ips.sort();
    Ok(ips)
}

/// A resolver that asks only `server`, over UDP then TCP, without caching or recursion.
pub fn resolver(server: SocketAddr) -> Result<TokioResolver> {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
    let mut builder =
        Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    // A cached answer would hide the change a test just made.
    opts.cache_size = 0;
    opts.recursion_desired = false;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    builder.build().context("building the DNS resolver")
}

/// `name` with a trailing dot.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') { name.to_string() } else { format!("{name}.") }
}

/// `name` on PATH, or in /usr/sbin (not on a non-root PATH).
fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: {INSTALL_HINT}"))
}
