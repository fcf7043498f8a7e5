//! [`PgPair`]: a real PostgreSQL primary and a hot standby streaming from it, on loopback, for
//! tests of replication-lag checks, freezes and promotions.
//!
//! Each pair lives in its own temp dir: `primary/` and `standby/` data dirs, a socket dir per
//! server and a log file per server. `initdb` and `postgres` refuse to run as root, so when the
//! tests run as root every PostgreSQL process runs as the `postgres` user (switched to in the
//! child before exec, so the server stays a direct child and dies with the test).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::wait;

/// Upper bound for a server to accept connections after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound for `initdb` and `pg_basebackup`.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server gets to exit after SIGQUIT before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings shared by both servers, appended to the primary's `postgresql.conf` (the standby
/// gets them through `pg_basebackup`). Tuned for tests: durability off, small memory, fast
/// reconnects and fresh replication stats.
const PG_CONF: &str = "
# --- drcut-tests
fsync = off
synchronous_commit = off
# pg_rewind refuses a source without full page writes.
full_page_writes = on
shared_buffers = 16MB
max_connections = 40
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
hot_standby = on
hot_standby_feedback = on
# The primary's pg_stat_replication replay_lsn is at most this stale.
wal_receiver_status_interval = 1s
# A dead primary is noticed in seconds, and a restarted one reconnected to at once.
wal_sender_timeout = 10s
wal_receiver_timeout = 10s
wal_retrieve_retry_interval = 500ms
autovacuum = off
# pg_rewind needs it (or data checksums) to rebuild an old primary as a standby.
wal_log_hints = on
# pg_rewind reads the old primary's WAL back to the last checkpoint before the divergence:
# keep it through the checkpoints that follow (production: wal_keep_size or restore_command).
wal_keep_size = 64MB
logging_collector = off
log_line_prefix = '%m [%p] '
";

/// Client auth for both servers: trust on loopback, for queries and for replication. Every
/// 127.0.B.x address is a different source, so the whole of 127/8 is allowed.
const PG_HBA: &str = "\
local all         all                trust
local replication all                trust
host  all         all  127.0.0.0/8   trust
host  replication all  127.0.0.0/8   trust
";

/// Options of a [`PgPair`] beyond the defaults.
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    /// `wal_log_hints` on both servers (default on: `pg_rewind` needs it). Off makes a rewind of
    /// the old primary impossible.
    pub wal_log_hints: bool,
    /// `synchronous_standby_names = '*'` on the primary: the standby is a `sync` standby.
    pub synchronous: bool,
    /// Both servers on the same port (their addresses differ), so clients can find the
    /// primary by name alone, e.g. through a GSLB name that a cutover repoints.
    pub same_port: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { wal_log_hints: true, synchronous: false, same_port: false }
    }
}

/// A primary and a standby streaming from it. Dropping it stops both (immediate shutdown) and
/// deletes their data; if the test panicked, their log tails are printed first.
pub struct PgPair {
    bin: PathBuf,
    /// `(uid, gid)` of `postgres` when the tests run as root; `None` runs everything as the
    /// current user.
    owner: Option<(u32, u32)>,
    primary: PgServer,
    standby: PgServer,
    /// Last, so it is deleted after the servers are gone.
    dir: Option<tempfile::TempDir>,
}

/// One postgres server: where it listens, its files and its process.
struct PgServer {
    name: &'static str,
    addr: SocketAddr,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl PgServer {
    fn new(name: &'static str, dir: &Path, addr: SocketAddr) -> Self {
        PgServer {
            name,
            addr,
            data: dir.join(name),
            socket_dir: dir.join(format!("{name}-sock")),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// A tokio-postgres key=value DSN for the `postgres` superuser over TCP.
    fn dsn(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres connect_timeout=5", self.addr.ip(), self.addr.port())
    }
}

impl PgPair {
    /// Creates a primary on `ip_primary` and a standby on `ip_standby` (free ports), and waits
    /// until the standby streams. Takes about two seconds.
    pub async fn start(ip_primary: Ipv4Addr, ip_standby: Ipv4Addr) -> Result<PgPair> {
        Self::start_with(ip_primary, ip_standby, PgOptions::default()).await
    }

    /// [`PgPair::start`] with options.
    pub async fn start_with(ip_primary: Ipv4Addr, ip_standby: Ipv4Addr, options: PgOptions) -> Result<PgPair> {
        crate::init_tracing();
        let started = Instant::now();
        let bin = pg_bin_dir()?;
        let owner = postgres_owner()?;
        let dir = tempfile::Builder::new().prefix(&format!("drcut-pg-{ip_primary}-")).tempdir()?;
        // tempfile creates the dir 0700: postgres must be able to enter it and create the data
        // and socket dirs inside.
        chmod(dir.path(), 0o755)?;
        chown(dir.path(), owner)?;

        let (port_primary, port_standby) = if options.same_port {
            let p = free_port_on_both(ip_primary, ip_standby)?;
            (p, p)
        } else {
            (free_port(ip_primary, false)?, free_port(ip_standby, false)?)
        };
        let primary = PgServer::new("primary", dir.path(), SocketAddr::from((ip_primary, port_primary)));
        let standby = PgServer::new("standby", dir.path(), SocketAddr::from((ip_standby, port_standby)));
        let mut pair = PgPair { bin, owner, primary, standby, dir: Some(dir) };

        pair.initdb(options).await?;
        spawn_server(&pair.bin, pair.owner, &mut pair.primary)?;
        wait_accepting(&mut pair.primary).await?;

        pair.base_backup().await?;
        spawn_server(&pair.bin, pair.owner, &mut pair.standby)?;
        wait_accepting(&mut pair.standby).await?;
        pair.wait_streaming().await?;
        if options.synchronous {
            // The primary's own settings only (the standby's copy was made before).
            // Apart: ALTER SYSTEM refuses a transaction block (a multi-statement query is one).
            pair.exec_primary("ALTER SYSTEM SET synchronous_standby_names = '*'").await?;
            pair.exec_primary("SELECT pg_reload_conf()").await?;
            wait::until("the standby reported as sync", START_TIMEOUT, async || {
                let n =
                    pair.scalar_primary("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").await?;
                ensure!(n.as_deref() == Some("1"), "no sync standby yet");
                Ok(())
            })
            .await?;
        }
        tracing::info!(
            primary = %pair.primary.addr,
            standby = %pair.standby.addr,
            dir = %pair.dir().display(),
            took = ?started.elapsed(),
            "postgres primary and standby streaming"
        );
        Ok(pair)
    }

    /// The temp dir holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until drop").path()
    }

    /// The primary's TCP address.
    pub fn primary_addr(&self) -> SocketAddr {
        self.primary.addr
    }

    /// The standby's TCP address.
    pub fn standby_addr(&self) -> SocketAddr {
        self.standby.addr
    }

    /// A tokio-postgres key=value DSN for the primary (user `postgres`, trust auth).
    pub fn primary_dsn(&self) -> String {
        self.primary.dsn()
    }

    /// A tokio-postgres key=value DSN for the standby (user `postgres`, trust auth).
    pub fn standby_dsn(&self) -> String {
        self.standby.dsn()
    }

    /// A new connection to the primary.
    pub async fn primary_client(&self) -> Result<Client> {
        connect(&self.primary.dsn()).await.context("connecting to the primary")
    }

    /// A new connection to the standby.
    pub async fn standby_client(&self) -> Result<Client> {
        connect(&self.standby.dsn()).await.context("connecting to the standby")
    }

    /// Runs `sql` (one or more statements) on the primary.
    pub async fn exec_primary(&self, sql: &str) -> Result<()> {
        self.primary_client().await?.batch_execute(sql).await.with_context(|| format!("on the primary: {sql}"))
    }

    /// Runs `sql` (one or more statements) on the standby.
    pub async fn exec_standby(&self, sql: &str) -> Result<()> {
        self.standby_client().await?.batch_execute(sql).await.with_context(|| format!("on the standby: {sql}"))
    }

    /// Runs `sql` on the primary and returns its rows as text (`None` for NULL).
    pub async fn query_primary(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        text_rows(&self.primary_client().await?, sql).await.with_context(|| format!("on the primary: {sql}"))
    }

    /// Runs `sql` on the standby and returns its rows as text (`None` for NULL).
    pub async fn query_standby(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        text_rows(&self.standby_client().await?, sql).await.with_context(|| format!("on the standby: {sql}"))
    }

    /// The first column of the first row of `sql` on the primary, as text.
    pub async fn scalar_primary(&self, sql: &str) -> Result<Option<String>> {
        first_value(self.query_primary(sql).await?, sql)
    }

    /// The first column of the first row of `sql` on the standby, as text.
    pub async fn scalar_standby(&self, sql: &str) -> Result<Option<String>> {
        first_value(self.query_standby(sql).await?, sql)
    }

    /// Pauses WAL replay on the standby and waits until it is paused: WAL keeps arriving but
    /// is not applied, so replay lag grows while the standby stays connected.
    pub async fn pause_replay(&self) -> Result<()> {
        self.exec_standby("SELECT pg_wal_replay_pause()").await?;
        // The request is asynchronous; a record being applied finishes first.
        wait::until("WAL replay paused on the standby", START_TIMEOUT, async || {
            let state = self.scalar_standby("SELECT pg_get_wal_replay_pause_state()").await?;
            ensure!(state.as_deref() == Some("paused"), "replay pause state {state:?}");
            Ok(())
        })
        .await?;
        tracing::info!("standby replay paused");
        Ok(())
    }

    /// Resumes WAL replay on the standby.
    pub async fn resume_replay(&self) -> Result<()> {
        self.exec_standby("SELECT pg_wal_replay_resume()").await?;
        tracing::info!("standby replay resumed");
        Ok(())
    }

    /// Waits until the primary's `pg_stat_replication` shows a standby in state `streaming`.
    pub async fn wait_streaming(&self) -> Result<()> {
        wait::until("the standby streaming from the primary", START_TIMEOUT, async || {
            let n = self.scalar_primary("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").await?;
            ensure!(n.as_deref() != Some("0"), "no walsender streaming yet");
            Ok(())
        })
        .await
    }

    /// Crashes the primary: an immediate shutdown (what `pg_ctl stop -m immediate` sends,
    /// SIGQUIT), with no checkpoint, as a lost primary looks to the standby.
    pub async fn stop_primary_immediate(&mut self) -> Result<()> {
        stop_immediate(&mut self.primary).await
    }

    /// Crashes the standby (immediate shutdown).
    pub async fn stop_standby_immediate(&mut self) -> Result<()> {
        stop_immediate(&mut self.standby).await
    }

    /// Starts the primary again on its data dir and address (crash recovery after
    /// [`PgPair::stop_primary_immediate`]) and waits until it accepts connections.
    pub async fn restart_primary(&mut self) -> Result<()> {
        reap(&mut self.primary);
        ensure!(pidfile_postmaster(&self.primary).is_none(), "the primary is running (started by someone else)");
        spawn_server(&self.bin, self.owner, &mut self.primary)?;
        wait_accepting(&mut self.primary).await
    }

    /// Starts the standby again (see [`PgPair::restart_primary`]).
    pub async fn restart_standby(&mut self) -> Result<()> {
        reap(&mut self.standby);
        ensure!(pidfile_postmaster(&self.standby).is_none(), "the standby is running (started by someone else)");
        spawn_server(&self.bin, self.owner, &mut self.standby)?;
        wait_accepting(&mut self.standby).await
    }

    /// `kill -9` of the primary's postmaster and of every process it started: a power cut as
    /// the server sees it (its children are killed too, or they would hold its shared memory
    /// and keep a restart from starting).
    pub async fn kill9_primary(&mut self) -> Result<()> {
        let pid = match self.primary.child.as_ref().and_then(|c| c.id()) {
            Some(p) => p as i32,
            None => pidfile_postmaster(&self.primary).context("the primary is not running")?,
        };
        let children = child_pids(pid);
        // SAFETY: plain syscalls on pids of this test's servers.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            for c in &children {
                libc::kill(*c, libc::SIGKILL);
            }
        }
        if let Some(mut child) = self.primary.child.take() {
            child.wait().await.ok();
        }
        wait::until("the primary's processes gone", STOP_TIMEOUT, async || {
            let alive: Vec<i32> =
                std::iter::once(pid).chain(children.iter().copied()).filter(|p| pid_alive(*p)).collect();
            ensure!(alive.is_empty(), "still alive: {alive:?}");
            Ok(())
        })
        .await?;
        tracing::info!(pid, children = children.len(), "postgres primary killed (SIGKILL)");
        Ok(())
    }

    /// Whether a postmaster runs on the primary's data dir (started by the harness or by
    /// anyone else, e.g. an agent's `pg_ctl`).
    pub fn primary_running(&mut self) -> bool {
        reap(&mut self.primary);
        // `pg_ctl stop` returns once the pid file is gone; the process may take a moment longer
        // to exit and be reaped.
        for _ in 0..40 {
            if self.primary.child.is_none() || pidfile_postmaster(&self.primary).is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            reap(&mut self.primary);
        }
        self.primary.child.is_some() || pidfile_postmaster(&self.primary).is_some()
    }

    /// The primary's data dir (for agent configs: `data_dir`).
    pub fn primary_data_dir(&self) -> &Path {
        &self.primary.data
    }

    /// The standby's data dir.
    pub fn standby_data_dir(&self) -> &Path {
        &self.standby.data
    }

    /// PostgreSQL's bin dir (for agent configs: `bin_dir`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Tries a write on the primary from a new session (a table created, a row inserted):
    /// `Ok(Ok(()))` when it was accepted, `Ok(Err(why))` when the server refused it (the
    /// SQLSTATE and message), `Err` when no session could be opened.
    pub async fn try_write_primary(&self) -> Result<std::result::Result<(), String>> {
        try_write(&self.primary.dsn()).await
    }

    /// Tries a write on the standby (see [`PgPair::try_write_primary`]).
    pub async fn try_write_standby(&self) -> Result<std::result::Result<(), String>> {
        try_write(&self.standby.dsn()).await
    }

    /// Fails unless a write on the primary is refused as read-only (SQLSTATE 25006).
    pub async fn assert_primary_write_fails(&self) -> Result<()> {
        match self.try_write_primary().await? {
            Ok(()) => bail!("a write on the primary was accepted"),
            Err(why) => {
                ensure!(why.starts_with("25006"), "the write failed, but not as read-only: {why}");
                Ok(())
            }
        }
    }

    /// The last `lines` lines of both servers' logs, for failure reports (and of the logs of
    /// servers an agent started with `pg_ctl`).
    pub fn log_tail(&self, lines: usize) -> String {
        [&self.primary, &self.standby]
            .iter()
            .map(|s| {
                let ctl = s.data.join("drcut-pg_ctl.log");
                let ctl = if ctl.exists() {
                    format!(
                        "----- postgres {} started by pg_ctl ({}):\n{}\n",
                        s.name,
                        ctl.display(),
                        file_tail(&ctl, lines)
                    )
                } else {
                    String::new()
                };
                format!("----- postgres {} ({}):\n{}\n{ctl}", s.name, s.log.display(), file_tail(&s.log, lines))
            })
            .collect()
    }

    /// `initdb` for the primary, then the shared settings and client auth.
    async fn initdb(&self, options: PgOptions) -> Result<()> {
        let data = &self.primary.data;
        let args = [
            "-D".as_ref(),
            data.as_os_str(),
            "-U".as_ref(),
            "postgres".as_ref(),
            "-A".as_ref(),
            "trust".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
            "--locale=C".as_ref(),
            // Nothing here needs to survive a power cut; skipping fsync saves most of the time.
            "--no-sync".as_ref(),
        ];
        run_tool(&self.bin.join("initdb"), &args, self.owner, self.dir()).await?;
        let mut conf = OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
        conf.write_all(PG_CONF.as_bytes())?;
        if !options.wal_log_hints {
            conf.write_all(b"wal_log_hints = off\n")?;
        }
        std::fs::write(data.join("pg_hba.conf"), PG_HBA)?;
        chown(&data.join("pg_hba.conf"), self.owner)
    }

    /// The standby's data dir: a base backup of the running primary, with `standby.signal` and
    /// `primary_conninfo` written by `-R`.
    async fn base_backup(&self) -> Result<()> {
        let host = self.primary.addr.ip().to_string();
        let port = self.primary.addr.port().to_string();
        let args = [
            "-h".as_ref(),
            host.as_ref(),
            "-p".as_ref(),
            port.as_ref(),
            "-U".as_ref(),
            "postgres".as_ref(),
            "-D".as_ref(),
            self.standby.data.as_os_str(),
            "-R".as_ref(),
            "-X".as_ref(),
            "stream".as_ref(),
            // Start at once instead of waiting for the next timed checkpoint.
            "--checkpoint=fast".as_ref(),
            "--no-sync".as_ref(),
        ];
        run_tool(&self.bin.join("pg_basebackup"), &args, self.owner, self.dir()).await
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== drcut-tests: postgres logs (test failed)\n{}", self.log_tail(40));
        }
        // The standby first, so it does not log a burst of reconnect failures.
        stop_now(&mut self.standby);
        stop_now(&mut self.primary);
        // DRCUT_KEEP_TMP=1 keeps data dirs and full logs for a post-mortem.
        if std::env::var_os("DRCUT_KEEP_TMP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("drcut-tests: kept {}", dir.keep().display());
        }
    }
}

/// A write from a new session on `dsn` (see [`PgPair::try_write_primary`]).
pub async fn try_write(dsn: &str) -> Result<std::result::Result<(), String>> {
    let c = connect(dsn).await?;
    let r = c
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS drcut_write_check (at timestamptz); INSERT INTO drcut_write_check VALUES (now())",
        )
        .await;
    Ok(r.map_err(|e| match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }))
}

/// Reaps `server`'s child if it has exited (stopped by someone else, e.g. `pg_ctl stop`).
fn reap(server: &mut PgServer) {
    if server.child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None))) {
        server.child = None;
    }
}

/// The pid of a live postmaster named by `server`'s `postmaster.pid`.
fn pidfile_postmaster(server: &PgServer) -> Option<i32> {
    let text = std::fs::read_to_string(server.data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    (pid_alive(pid) && cwd == std::fs::canonicalize(&server.data).ok()?).then_some(pid)
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub(crate) fn pid_alive(pid: i32) -> bool {
    // A zombie has exited: its /proc stat state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The pids whose parent is `pid`.
fn child_pids(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: i32 = stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(p)
        })
        .collect()
}

/// Connects to `dsn` without TLS and drives the connection in a background task.
pub async fn connect(dsn: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls).await.with_context(|| format!("connecting to {dsn}"))?;
    tokio::spawn(async move {
        // Errors end the connection; the client then reports them on its next call.
        let _ = conn.await;
    });
    Ok(client)
}

/// Rows of `sql` as text, through the simple query protocol (no type mapping needed).
async fn text_rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let rows = client.simple_query(sql).await?;
    Ok(rows
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect())
}

/// The first value of the first row.
fn first_value(rows: Vec<Vec<Option<String>>>, sql: &str) -> Result<Option<String>> {
    rows.into_iter().next().and_then(|r| r.into_iter().next()).with_context(|| format!("no rows from {sql}"))
}

/// The bin dir of the newest installed PostgreSQL (`$DRCUT_PG_BIN` overrides), failing with
/// the way to install it.
fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DRCUT_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    // Debian keeps the server binaries off PATH, one dir per major version.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/test as root to \
         install it, or set DRCUT_PG_BIN to a dir holding initdb, postgres and pg_basebackup",
    )
}

/// The `postgres` user's ids when running as root (PostgreSQL refuses root), else `None`.
pub(crate) fn postgres_owner() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // /etc/passwd rather than getpwnam: getpwnam is not thread-safe and tests run threads.
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).context(
        "running as root but there is no `postgres` user to run PostgreSQL as: run scripts/test to install \
         postgresql (the package creates the user)",
    )?;
    let fields: Vec<&str> = line.split(':').collect();
    ensure!(fields.len() >= 4, "malformed /etc/passwd line: {line}");
    Ok(Some((fields[2].parse()?, fields[3].parse()?)))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))
}

/// Makes `cmd` run as `owner` (when set) and die with the test process.
fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        // std switches ids (and drops root's supplementary groups) before pre_exec hooks run.
        cmd.uid(uid).gid(gid);
    }
    die_with_test(cmd);
}

/// Makes the kernel SIGKILL `cmd`'s process when the spawning thread dies, so a test killed
/// outright (a nextest timeout, where no Drop runs) leaves no server holding its addresses.
/// Spawn from the test's own task, as in node.rs.
pub(crate) fn die_with_test(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It runs after
    // the uid switch, which would otherwise clear the setting.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs a PostgreSQL tool to completion as `owner`, failing with its output.
async fn run_tool(program: &Path, args: &[&std::ffi::OsStr], owner: Option<(u32, u32)>, cwd: &Path) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        // The tools chdir nowhere themselves; the test's cwd may not be readable by postgres.
        .current_dir(cwd)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    as_owner(&mut cmd, owner);
    let child = cmd.spawn().with_context(|| format!("spawning {}", program.display()))?;
    let out = match tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => bail!("{} still running after {TOOL_TIMEOUT:?}", program.display()),
    };
    ensure!(
        out.status.success(),
        "{} {:?} failed with {}\n--- stdout\n{}--- stderr\n{}",
        program.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Starts `postgres` in the foreground as a direct child, its output appended to its log.
/// Address, port and socket dir are command-line settings: they differ between the primary
/// and the standby, whose config files are copies of each other.
fn spawn_server(bin: &Path, owner: Option<(u32, u32)>, server: &mut PgServer) -> Result<()> {
    ensure!(server.child.is_none(), "postgres {} is already running", server.name);
    if !server.socket_dir.exists() {
        std::fs::create_dir(&server.socket_dir)?;
        chown(&server.socket_dir, owner)?;
    }
    let mut log = OpenOptions::new().create(true).append(true).open(&server.log)?;
    writeln!(log, "=== harness: starting postgres {} on {}", server.name, server.addr)?;
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(&server.data)
        .arg("-c")
        .arg(format!("listen_addresses={}", server.addr.ip()))
        .arg("-c")
        .arg(format!("port={}", server.addr.port()))
        .arg("-c")
        .arg(format!("unix_socket_directories={}", server.socket_dir.display()))
        .current_dir(&server.data)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    as_owner(&mut cmd, owner);
    let child = cmd.spawn().with_context(|| format!("spawning postgres {}", server.name))?;
    tracing::info!(server = server.name, pid = child.id(), addr = %server.addr, "postgres started");
    server.child = Some(child);
    Ok(())
}

/// Waits until `server` answers a query; fails at once, with its log, if it exits.
async fn wait_accepting(server: &mut PgServer) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let dsn = server.dsn();
    loop {
        if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            server.child = None;
            bail!("postgres {} exited with {status} while starting\n{}", server.name, file_tail(&server.log, 30));
        }
        // A standby refuses connections until it has replayed to a consistent point.
        let err = match connect(&dsn).await {
            Ok(c) => match c.simple_query("SELECT 1").await {
                Ok(_) => return Ok(()),
                Err(e) => anyhow::Error::from(e),
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "postgres {} not accepting connections after {START_TIMEOUT:?}; last: {err:#}\n{}",
                server.name,
                file_tail(&server.log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Immediate shutdown (SIGQUIT) and wait; SIGKILL if it hangs.
async fn stop_immediate(server: &mut PgServer) -> Result<()> {
    reap(server);
    let Some(mut child) = server.child.take() else {
        // Started by an agent's pg_ctl: not our child, found by its pid file.
        let pid = pidfile_postmaster(server).with_context(|| format!("postgres {} is not running", server.name))?;
        // SAFETY: plain syscall on the postmaster of this test's data dir.
        unsafe {
            libc::kill(pid, libc::SIGQUIT);
        }
        return wait::until(&format!("postgres {} (pid {pid}) to exit", server.name), STOP_TIMEOUT, async || {
            ensure!(!pid_alive(pid), "still running");
            Ok(())
        })
        .await;
    };
    signal(&child, libc::SIGQUIT);
    if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
        child.start_kill().ok();
        child.wait().await.ok();
        bail!("postgres {} did not exit within {STOP_TIMEOUT:?} of SIGQUIT", server.name);
    }
    tracing::info!(server = server.name, "postgres stopped (immediate)");
    Ok(())
}

/// [`stop_immediate`] without an async context, for `Drop`: the data dir is deleted next, so
/// the server must be gone first.
fn stop_now(server: &mut PgServer) {
    reap(server);
    let Some(mut child) = server.child.take() else {
        // Started by an agent's pg_ctl: not our child, found by its pid file.
        if let Some(pid) = pidfile_postmaster(server) {
            // SAFETY: plain syscall on the postmaster of this test's data dir.
            unsafe {
                libc::kill(pid, libc::SIGQUIT);
            }
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            while pid_alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        return;
    };
    signal(&child, libc::SIGQUIT);
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    while matches!(child.try_wait(), Ok(None)) {
        if std::time::Instant::now() >= deadline {
            child.start_kill().ok();
            std::thread::sleep(Duration::from_millis(100));
            let _ = child.try_wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` to a child that has not been reaped.
fn signal(child: &Child, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall on a pid this process spawned and has not reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// A free TCP port on `ip` (and free for UDP too when `udp` is set), for servers that cannot
/// bind port 0 and report it back. Every test has its own IPs, so nothing else races for it.
pub(crate) fn free_port(ip: Ipv4Addr, udp: bool) -> Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
        let port = tcp.local_addr()?.port();
        if !udp || std::net::UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port on {ip} free for both TCP and UDP")
}

/// A TCP port free on both `a` and `b`.
fn free_port_on_both(a: Ipv4Addr, b: Ipv4Addr) -> Result<u16> {
    for _ in 0..50 {
        let port = free_port(a, false)?;
        if std::net::TcpListener::bind((b, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no TCP port free on both {a} and {b}")
}

/// The last `lines` lines of a log file ("" if it does not exist).
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
