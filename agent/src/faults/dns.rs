//! [`DnsFaultProxy`]: a UDP DNS forwarder in front of one upstream server that answers
//! NXDOMAIN or SERVFAIL for the names a GameDay fault fails, with the question echoed, and
//! relays everything else.
//!
//! Each forwarded query goes out on its own ephemeral socket, and only an answer carrying the
//! query's id is relayed (an upstream that never answers simply times out, as it would for a
//! client asking it directly). TCP is not proxied: a client that falls back to TCP after a
//! truncated answer must reach the upstream itself.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::Name;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;

/// How long a forwarded query waits for the upstream's answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest DNS message over UDP (with EDNS).
const MAX_UDP: usize = 65_535;

/// The failure a name gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The name does not exist.
    Nxdomain,
    /// The server failed.
    Servfail,
}

impl Answer {
    fn rcode(self) -> ResponseCode {
        match self {
            Answer::Nxdomain => ResponseCode::NXDomain,
            Answer::Servfail => ResponseCode::ServFail,
        }
    }
}

/// Names failed, by the fault that failed them: (lower-case absolute name, answer).
type Rules = Arc<Mutex<BTreeMap<String, (String, Answer)>>>;

/// A running DNS fault proxy; dropping it stops it.
pub struct DnsFaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    rules: Rules,
    task: tokio::task::JoinHandle<()>,
}

/// `name` in the form queries are compared in: absolute (it must end with a dot), lower case.
pub fn normalize(name: &str) -> Result<String, String> {
    if !name.ends_with('.') {
        return Err(format!("{name:?} is not an absolute name (end it with a dot)"));
    }
    let n = Name::from_ascii(name).map_err(|e| format!("{name:?} is not a domain name: {e}"))?;
    Ok(n.to_lowercase().to_ascii())
}

impl DnsFaultProxy {
    /// Answers queries arriving on `socket`, forwarding them to `upstream`.
    pub fn start(socket: UdpSocket, upstream: SocketAddr) -> std::io::Result<DnsFaultProxy> {
        let addr = socket.local_addr()?;
        let rules: Rules = Arc::default();
        let task = tokio::spawn(serve(Arc::new(socket), upstream, rules.clone()));
        Ok(DnsFaultProxy { addr, upstream, rules, task })
    }

    /// The address clients query.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server behind it.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Fails `name` (see [`normalize`]) with `answer` on behalf of fault `key`.
    pub fn fail(&self, key: &str, name: &str, answer: Answer) -> Result<(), String> {
        let name = normalize(name)?;
        tracing::info!(proxy = %self.addr, %name, ?answer, fault = key, "dns fault proxy: failing a name");
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), (name, answer));
        Ok(())
    }

    /// Forwards what fault `key` failed again; false when it failed nothing here.
    pub fn heal(&self, key: &str) -> bool {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).remove(key).is_some()
    }
}

impl Drop for DnsFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The failure answer for `query`, if one of `rules` fails its (first) question's name.
fn failure(rules: &Rules, query: &Message) -> Option<Message> {
    let q = query.queries.first()?;
    let asked = q.name().to_lowercase().to_ascii();
    let rules = rules.lock().unwrap_or_else(|p| p.into_inner());
    let (_, answer) = rules.values().find(|(name, _)| *name == asked)?;
    let mut r = Message::error_msg(query.metadata.id, query.metadata.op_code, answer.rcode());
    r.metadata.recursion_desired = query.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(query.queries.iter().cloned());
    Some(r)
}

async fn serve(socket: Arc<UdpSocket>, upstream: SocketAddr, rules: Rules) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on some systems; keep serving.
                tracing::debug!(upstream = %upstream, "dns fault proxy recv: {e}");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        // What does not parse goes upstream unjudged: the upstream answers it as it would.
        if let Some(answer) = Message::from_vec(&packet).ok().and_then(|m| failure(&rules, &m)) {
            match answer.to_vec() {
                Ok(bytes) => {
                    let _ = socket.send_to(&bytes, from).await;
                }
                Err(e) => tracing::warn!("dns fault proxy: cannot encode the failure answer: {e}"),
            }
            continue;
        }
        tokio::spawn(forward(socket.clone(), packet, from, upstream));
    }
}

/// Sends `packet` to `upstream` and relays the answer with the same id to `client`.
async fn forward(socket: Arc<UdpSocket>, packet: Vec<u8>, client: SocketAddr, upstream: SocketAddr) {
    if packet.len() < 2 {
        return;
    }
    let local: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let relay = async {
        let up = UdpSocket::bind(local).await?;
        up.connect(upstream).await?;
        up.send(&packet).await?;
        let mut buf = vec![0u8; MAX_UDP];
        loop {
            let n = up.recv(&mut buf).await?;
            if n >= 2 && buf[..2] == packet[..2] {
                socket.send_to(&buf[..n], client).await?;
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, relay).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%upstream, "dns fault proxy: forwarding failed: {e}"),
        Err(_) => tracing::debug!(%upstream, "dns fault proxy: no answer from the upstream"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record, RecordType};

    /// A tiny authoritative stand-in: answers every A query with 192.0.2.1.
    pub(crate) async fn responder() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                r.add_queries(q.queries.iter().cloned());
                let name = q.queries[0].name().clone();
                r.add_answer(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 1))));
                let _ = s.send_to(&r.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    pub(crate) async fn ask(server: SocketAddr, name: &str) -> Message {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        s.send_to(&q.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf)).await.expect("an answer").unwrap();
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(r.metadata.id, q.metadata.id);
        r
    }

    #[tokio::test]
    async fn failed_names_get_the_rcode_and_the_rest_is_forwarded() {
        let upstream = responder().await;
        let p = DnsFaultProxy::start(UdpSocket::bind("127.0.0.1:0").await.unwrap(), upstream).unwrap();
        let r = ask(p.addr(), "psp.example.").await;
        assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 1));
        p.fail("r1/f1", "PSP.example.", Answer::Nxdomain).unwrap();
        // Any case, the question echoed.
        let r = ask(p.addr(), "psp.EXAMPLE.").await;
        assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NXDomain, 0));
        assert_eq!(r.queries[0].name().to_ascii(), "psp.EXAMPLE.");
        // Other names still go through.
        let r = ask(p.addr(), "wallet.example.").await;
        assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 1));
        p.fail("r1/f2", "kyc.example.", Answer::Servfail).unwrap();
        assert_eq!(ask(p.addr(), "kyc.example.").await.metadata.response_code, ResponseCode::ServFail);
        assert!(p.heal("r1/f1"));
        assert!(!p.heal("r1/f1"));
        assert_eq!(ask(p.addr(), "psp.example.").await.metadata.response_code, ResponseCode::NoError);
        assert_eq!(ask(p.addr(), "kyc.example.").await.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn names_must_be_absolute() {
        assert_eq!(normalize("PSP.Example.").unwrap(), "psp.example.");
        assert!(normalize("psp.example").unwrap_err().contains("not an absolute name"));
    }
}
