//! [`FaultProxy`]: a TCP proxy on one directed link between two nodes, the test harness's
//! stand-in for a network partition (this machine has no netem or iptables).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Forwards every connection made to its listen address to a target address, until cut.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// State shared by the accept loop and the handle.
struct Shared {
    /// While set, existing connections have been closed and new ones are closed on accept.
    cut: AtomicBool,
    /// While true, packets vanish: connections stay open but nothing is forwarded or answered
    /// (a silent network drop, which only a timeout can detect).
    blackhole: tokio::sync::watch::Sender<bool>,
    /// The copy tasks of open connections, so `cut` can close them.
    conns: Mutex<Vec<AbortHandle>>,
}

impl FaultProxy {
    /// Binds `listen` (port 0 picks a free port) and forwards connections to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding fault proxy on {listen}"))?;
        let addr = listener.local_addr()?;
        let (blackhole, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared { cut: AtomicBool::new(false), blackhole, conns: Mutex::new(Vec::new()) });
        let accept_task = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Ok(FaultProxy { addr, target, shared, accept_task })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection (with a reset) and closes new ones as soon as they arrive.
    pub fn cut(&self) {
        // Set the flag before closing, so a connection accepted in between is refused too.
        self.shared.cut.store(true, Ordering::SeqCst);
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
        tracing::debug!(proxy = %self.addr, target = %self.target, "link cut");
    }

    /// Silently drops everything from now on: open connections stop forwarding without being
    /// closed, new ones are accepted and never answered.
    pub fn blackhole(&self) {
        self.shared.blackhole.send_replace(true);
        tracing::debug!(proxy = %self.addr, target = %self.target, "link blackholed");
    }

    /// Forwards new connections again (connections that were blackholed are reset, as a
    /// peer's TCP would eventually time them out).
    pub fn heal(&self) {
        if self.shared.blackhole.send_replace(false) {
            for conn in self.shared.conns.lock().unwrap().drain(..) {
                conn.abort();
            }
        }
        self.shared.cut.store(false, Ordering::SeqCst);
        tracing::debug!(proxy = %self.addr, target = %self.target, "link healed");
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// Accepts connections forever, refusing them while cut.
async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if shared.cut.load(Ordering::SeqCst) {
            reset(inbound);
            continue;
        }
        let conn = tokio::spawn(forward(inbound, target, shared.blackhole.subscribe()));
        let mut conns = shared.conns.lock().unwrap();
        // Forget finished connections so a long test does not accumulate handles.
        conns.retain(|c| !c.is_finished());
        if shared.cut.load(Ordering::SeqCst) {
            // `cut` ran while this connection was being set up and did not see it.
            conn.abort();
        } else {
            conns.push(conn.abort_handle());
        }
    }
}

/// Copies bytes both ways until either side closes. Aborting the task drops both sockets;
/// `SO_LINGER 0` makes that a reset, so both ends notice at once instead of at a timeout.
async fn forward(mut inbound: TcpStream, target: SocketAddr, mut blackhole: tokio::sync::watch::Receiver<bool>) {
    let _ = inbound.set_zero_linger();
    if !*blackhole.borrow() {
        let Ok(mut outbound) = TcpStream::connect(target).await else {
            return;
        };
        let _ = outbound.set_zero_linger();
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
            _ = blackhole.wait_for(|b| *b) => {}
        }
    }
    // Blackholed: keep the client's socket open and swallow what it sends.
    let mut buf = [0u8; 4096];
    loop {
        match tokio::io::AsyncReadExt::read(&mut inbound, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Closes a connection with a reset.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on a free loopback port.
    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn forwards_cuts_and_heals() {
        let target = echo_server().await;
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), target).await.unwrap();
        assert_eq!(roundtrip(proxy.addr()).await.unwrap(), b"ping");

        // An open connection dies on cut.
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"a").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        proxy.cut();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), open.read_to_end(&mut rest))
            .await
            .expect("a cut connection must close promptly");
        assert!(read.is_err() || rest.is_empty());

        // New connections are refused while cut.
        assert!(roundtrip(proxy.addr()).await.is_err());

        proxy.heal();
        assert_eq!(roundtrip(proxy.addr()).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn blackhole_swallows_silently_and_heals() {
        let target = echo_server().await;
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), target).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();

        proxy.blackhole();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The open connection stays open but gets no answer; a new one connects but hangs.
        open.write_all(b"ping").await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), open.read_exact(&mut buf)).await.is_err());
        let err = roundtrip(proxy.addr()).await.unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");

        proxy.heal();
        assert_eq!(roundtrip(proxy.addr()).await.unwrap(), b"ping");
    }
}
