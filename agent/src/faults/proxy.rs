//! [`FaultProxy`]: a TCP forwarder between local clients and one dependency, which a GameDay
//! fault switches into a failure [`Mode`] and a revert switches back to pass-through.
//!
//! Every connection runs two copy directions in one task; both watch the proxy's mode, so a
//! mode applies to open connections as well as new ones where that makes sense:
//!
//! - `Blackhole`: nothing is read or written in either direction and nothing is closed; new
//!   connections are accepted and never answered (the upstream is not even dialled). A revert
//!   *resumes* them: whatever the peers sent meanwhile sits in the kernel buffers and is
//!   forwarded then, as after a healed partition shorter than the peers' own timeouts.
//! - `Latency`: every chunk waits `latency ± jitter` (uniform) before it is written. Chunks of
//!   one direction are delayed one after the other, so order is preserved (and a bulk transfer
//!   slows down too, as on a long link with a small window).
//! - `Reset`: open connections are closed with an RST (`SO_LINGER` 0) on both sides; new ones
//!   are reset right after accept.
//! - `Bandwidth`: each direction of each connection is paced to `bytes_per_second` (a token
//!   bucket with no burst: a transfer of N bytes takes at least N / rate).
//! - `Partial`: each new connection is reset with probability `failure_rate`; the others (and
//!   the open ones) pass through.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Largest chunk copied at once.
const CHUNK: usize = 16 * 1024;

/// How a fault proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Mode {
    /// Clean forwarding.
    #[default]
    PassThrough,
    /// Accept, never forward, never answer, never close.
    Blackhole,
    /// Delay every chunk by `latency` plus or minus a uniform `jitter`.
    Latency {
        /// Added to every chunk, per direction.
        latency: Duration,
        /// Half-width of the uniform spread around `latency`.
        jitter: Duration,
    },
    /// Reset every connection, open and new.
    Reset,
    /// Cap each direction of each connection.
    Bandwidth {
        /// The cap (> 0).
        bytes_per_second: u64,
    },
    /// Reset this share (0..=1) of new connections.
    Partial {
        /// Probability that a new connection is reset.
        failure_rate: f64,
    },
}

impl Mode {
    /// The wire name (`proxy.mode`), `pass_through` for clean forwarding.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::PassThrough => "pass_through",
            Mode::Blackhole => "blackhole",
            Mode::Latency { .. } => "latency",
            Mode::Reset => "reset",
            Mode::Bandwidth { .. } => "bandwidth",
            Mode::Partial { .. } => "partial",
        }
    }
}

/// A running TCP fault proxy; dropping it stops the listener and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    /// Connection tasks hold receivers: a dropped sender tells them the proxy is gone.
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Forwards connections accepted on `listener` to `upstream`, in pass-through mode.
    pub fn start(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::PassThrough);
        let accept = tokio::spawn(accept_loop(listener, upstream, rx));
        Ok(FaultProxy { addr, upstream, mode, accept })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The dependency behind it.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches every connection, open and new, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        tracing::info!(proxy = %self.addr, upstream = %self.upstream, mode = mode.name(), "fault proxy mode");
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Closes `s` with an RST instead of a FIN when it is dropped.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, rx: watch::Receiver<Mode>) {
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(upstream = %upstream, "fault proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mode = *rx.borrow();
        let reset_now = match mode {
            Mode::Reset => true,
            Mode::Partial { failure_rate } => rand::random::<f64>() < failure_rate,
            _ => false,
        };
        if reset_now {
            reset(&client);
            continue;
        }
        let _ = client.set_nodelay(true);
        tokio::spawn(connection(client, upstream, rx.clone()));
    }
}

/// How a connection ended.
enum End {
    /// Both directions finished.
    Done,
    /// The proxy was switched to reset.
    Reset,
    /// The proxy is gone.
    Gone,
}

async fn connection(mut client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<Mode>) {
    // Accepted while blackholed: held, unanswered, until the mode changes.
    if rx.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
        return;
    }
    if *rx.borrow() == Mode::Reset {
        reset(&client);
        return;
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            // The client sees what it would have seen dialling the upstream itself.
            tracing::debug!(%upstream, "fault proxy: cannot reach the upstream: {e}");
            reset(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let end = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let both = async { tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx.clone())) };
        let mut watch = rx.clone();
        tokio::select! {
            _ = both => End::Done,
            r = watch.wait_for(|m| *m == Mode::Reset) => if r.is_ok() { End::Reset } else { End::Gone },
        }
    };
    if matches!(end, End::Reset) {
        reset(&client);
        reset(&server);
    }
}

/// Copies `from` to `to` under the proxy's mode until `from` ends, then half-closes `to`.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, mut rx: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; CHUNK];
    // Bandwidth pacing: when the link is free for the next byte (no credit builds up idle).
    let mut free_at = Instant::now();
    loop {
        if rx.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return;
        }
        let cap = match *rx.borrow() {
            // Small chunks keep a paced stream smooth: about 20 per second.
            Mode::Bandwidth { bytes_per_second } => (bytes_per_second / 20).clamp(1, CHUNK as u64) as usize,
            _ => CHUNK,
        };
        let n = tokio::select! {
            r = from.read(&mut buf[..cap]) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // Blackholed while waiting: stop reading; the peer's bytes wait in the kernel.
            r = rx.wait_for(|m| *m == Mode::Blackhole) => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        };
        let mode = *rx.borrow();
        let delay = match mode {
            Mode::Latency { latency, jitter } => jittered(latency, jitter),
            Mode::Bandwidth { bytes_per_second } => {
                let now = Instant::now();
                free_at = free_at.max(now) + Duration::from_secs_f64(n as f64 / bytes_per_second.max(1) as f64);
                free_at - now
            }
            _ => Duration::ZERO,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Blackholed meanwhile: the chunk waits too.
        if rx.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// `latency ± jitter`, uniform, never below zero.
fn jittered(latency: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return latency;
    }
    let spread = jitter.as_micros() as u64;
    let offset = rand::random_range(0..=2 * spread);
    (latency + Duration::from_micros(offset)).saturating_sub(jitter)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::ErrorKind;

    /// An echo server on loopback: returns its address.
    pub(crate) async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    pub(crate) async fn proxy_to_echo() -> FaultProxy {
        let upstream = echo_server().await;
        FaultProxy::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), upstream).unwrap()
    }

    /// Sends `msg` and reads it back within `within`.
    async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut got)).await {
            Ok(r) => r.map(|_| got),
            Err(_) => Err(ErrorKind::TimedOut.into()),
        }
    }

    const SHORT: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn pass_through_and_blackhole_then_resume() {
        let p = proxy_to_echo().await;
        let mut open = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open, b"hello", LONG).await.unwrap(), b"hello");
        p.set(Mode::Blackhole);
        // Open connections stop answering without being closed...
        let e = round_trip(&mut open, b"ping", SHORT).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        // ...new ones are accepted and never answered.
        let mut new = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut new, b"anyone", SHORT).await.unwrap_err().kind(), ErrorKind::TimedOut);
        p.set(Mode::PassThrough);
        // Both resume: what was sent meanwhile arrives.
        let mut got = [0u8; 4];
        tokio::time::timeout(LONG, open.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"ping");
        let mut got = [0u8; 6];
        tokio::time::timeout(LONG, new.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"anyone");
        assert_eq!(round_trip(&mut open, b"again", LONG).await.unwrap(), b"again");
    }

    #[tokio::test]
    async fn latency_delays_each_direction() {
        let p = proxy_to_echo().await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut s, b"warm", LONG).await.unwrap();
        p.set(Mode::Latency { latency: Duration::from_millis(150), jitter: Duration::from_millis(20) });
        let t = Instant::now();
        assert_eq!(round_trip(&mut s, b"slow", LONG).await.unwrap(), b"slow");
        // There and back, each at least latency - jitter.
        assert!(t.elapsed() >= Duration::from_millis(260), "{:?}", t.elapsed());
        p.set(Mode::PassThrough);
        let t = Instant::now();
        round_trip(&mut s, b"fast", LONG).await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn reset_closes_open_and_new_connections() {
        let p = proxy_to_echo().await;
        let mut open = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut open, b"hi", LONG).await.unwrap();
        p.set(Mode::Reset);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(LONG, open.read(&mut buf)).await.unwrap();
        assert_eq!(r.unwrap_err().kind(), ErrorKind::ConnectionReset);
        let mut new = TcpStream::connect(p.addr()).await.unwrap();
        let r = tokio::time::timeout(LONG, new.read(&mut buf)).await.unwrap();
        assert_eq!(r.unwrap_err().kind(), ErrorKind::ConnectionReset);
        p.set(Mode::PassThrough);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"back", LONG).await.unwrap(), b"back");
    }

    #[tokio::test]
    async fn bandwidth_paces_a_transfer() {
        let p = proxy_to_echo().await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        p.set(Mode::Bandwidth { bytes_per_second: 40_000 });
        let data = vec![7u8; 20_000];
        let t = Instant::now();
        assert_eq!(round_trip(&mut s, &data, LONG).await.unwrap(), data);
        // 20 000 bytes at 40 000 B/s: at least 0.5 s each way (the directions overlap).
        assert!(t.elapsed() >= Duration::from_millis(500), "{:?}", t.elapsed());
        p.set(Mode::PassThrough);
        let t = Instant::now();
        round_trip(&mut s, &data, LONG).await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(200), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn partial_resets_that_share_of_new_connections() {
        let p = proxy_to_echo().await;
        let mut open = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut open, b"x", LONG).await.unwrap();
        p.set(Mode::Partial { failure_rate: 1.0 });
        for _ in 0..5 {
            let mut s = TcpStream::connect(p.addr()).await.unwrap();
            let mut buf = [0u8; 1];
            let r = tokio::time::timeout(LONG, s.read(&mut buf)).await.unwrap();
            assert_eq!(r.unwrap_err().kind(), ErrorKind::ConnectionReset);
        }
        // Open connections are left alone.
        assert_eq!(round_trip(&mut open, b"still", LONG).await.unwrap(), b"still");
        p.set(Mode::Partial { failure_rate: 0.0 });
        for _ in 0..5 {
            let mut s = TcpStream::connect(p.addr()).await.unwrap();
            assert_eq!(round_trip(&mut s, b"ok", LONG).await.unwrap(), b"ok");
        }
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let (l, j) = (Duration::from_millis(100), Duration::from_millis(30));
        for _ in 0..200 {
            let d = jittered(l, j);
            assert!(d >= l - j && d <= l + j, "{d:?}");
        }
        // A jitter wider than the latency clamps at zero instead of underflowing.
        for _ in 0..200 {
            assert!(jittered(Duration::from_millis(10), Duration::from_millis(50)) <= Duration::from_millis(60));
        }
        assert_eq!(jittered(l, Duration::ZERO), l);
    }
}
