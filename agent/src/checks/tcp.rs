//! `tcp` checks: can a TCP connection be opened, and how long does it take.

use super::{Sample, error_chain, millis, timeout_text, unreachable};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Opens a TCP connection to `addr` and closes it again.
#[derive(Debug)]
pub struct TcpProbe {
    /// `host:port`; a host name is resolved on every run, like a client would.
    addr: String,
}

impl TcpProbe {
    /// A probe of `addr` (`host:port`, checked by the config).
    pub fn new(addr: impl Into<String>) -> TcpProbe {
        TcpProbe { addr: addr.into() }
    }

    /// Connects once. reachable = ok = connected; values `connect_ms` and `latency_ms`.
    pub async fn run(&mut self, timeout: Duration) -> Sample {
        let start = Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(&self.addr)).await {
            Ok(Ok(stream)) => {
                let elapsed = start.elapsed();
                drop(stream);
                let ms = millis(elapsed);
                Sample {
                    reachable: true,
                    ok: true,
                    latency_ms: ms,
                    values: BTreeMap::from([("connect_ms".to_string(), ms), ("latency_ms".to_string(), ms)]),
                    labels: BTreeMap::new(),
                    error: None,
                }
            }
            Ok(Err(e)) => unreachable(start.elapsed(), format!("connect {}: {}", self.addr, error_chain(&e))),
            Err(_) => unreachable(start.elapsed(), format!("connect {}: {}", self.addr, timeout_text(timeout))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testutil::closed_port;

    #[tokio::test]
    async fn open_port_is_ok() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut p = TcpProbe::new(l.local_addr().unwrap().to_string());
        let s = p.run(Duration::from_secs(2)).await;
        assert!(s.reachable && s.ok, "{s:?}");
        assert!(s.values["connect_ms"] >= 0.0);
        assert_eq!(s.values["connect_ms"], s.values["latency_ms"]);
        assert_eq!(s.error, None);
    }

    #[tokio::test]
    async fn closed_port_is_unreachable() {
        let addr = closed_port().await;
        let mut p = TcpProbe::new(addr.to_string());
        let s = p.run(Duration::from_secs(2)).await;
        assert!(!s.reachable && !s.ok, "{s:?}");
        let e = s.error.unwrap();
        assert!(e.contains(&addr.to_string()) && e.to_lowercase().contains("refused"), "{e}");
    }
}
