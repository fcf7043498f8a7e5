//! `dns` checks: one query to one authoritative server, the answer set compared with what
//! clients should get. This is how convergence is observed, not assumed (DESIGN §5).

use super::{Sample, error_chain, millis, timeout_text, unreachable};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

/// The record types a check may ask for.
pub const RECORD_TYPES: [&str; 6] = ["A", "AAAA", "CNAME", "TXT", "SOA", "NS"];

/// Asks one server (`IP:port`) one question per run, uncached.
pub struct DnsProbe {
    server: SocketAddr,
    name: Name,
    record_type: RecordType,
    /// Normalised (see [`normalize_answer`]), sorted and deduplicated.
    expect: Option<Vec<String>>,
    resolver: TokioResolver,
}

impl fmt::Debug for DnsProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsProbe")
            .field("server", &self.server)
            .field("name", &self.name.to_string())
            .field("record_type", &self.record_type)
            .field("expect", &self.expect)
            .finish()
    }
}

impl DnsProbe {
    /// A probe asking `server` for `query`/`record_type` (one of [`RECORD_TYPES`]); a relative
    /// name is taken as absolute, since there is no search domain. `expect_answers`, if given,
    /// must be the whole answer set.
    pub fn new(
        server: SocketAddr,
        query: &str,
        record_type: &str,
        expect_answers: Option<&[String]>,
        timeout: Duration,
    ) -> Result<DnsProbe, String> {
        let record_type = parse_record_type(record_type)?;
        let mut name = Name::from_ascii(query).map_err(|e| format!("{query:?} is not a DNS name: {e}"))?;
        name.set_fqdn(true);
        let expect = match expect_answers {
            None => None,
            Some(list) => {
                let mut v = list.iter().map(|a| normalize_answer(record_type, a)).collect::<Result<Vec<_>, _>>()?;
                v.sort();
                v.dedup();
                Some(v)
            }
        };
        // Aimed at exactly this server: UDP first, TCP on truncation or UDP error; no cache (each
        // run must see the server's current answer), no recursion (it is authoritative), no
        // hosts file (it would answer instead of the server).
        let ns = NameServerConfig::new(
            server.ip(),
            true,
            vec![with_port(ConnectionConfig::udp(), server.port()), with_port(ConnectionConfig::tcp(), server.port())],
        );
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.recursion_desired = false;
        opts.try_tcp_on_error = true;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = timeout;
        // One attempt per run: the next run is the retry, and a retry inside the run would only
        // hide a lossy server from the window.
        opts.attempts = 1;
        opts.num_concurrent_reqs = 1;
        let resolver = builder.build().map_err(|e| format!("cannot build DNS resolver: {e}"))?;
        Ok(DnsProbe { server, name, record_type, expect, resolver })
    }

    /// Queries once. reachable = a reply of any rcode; ok = NOERROR, ≥1 answer and, with
    /// `expect_answers`, the same answer set; values `latency_ms`, `answers`; labels `answers`,
    /// `rcode`.
    pub async fn run(&mut self, timeout: Duration) -> Sample {
        let start = Instant::now();
        let result = tokio::time::timeout(timeout, self.resolver.lookup(self.name.clone(), self.record_type)).await;
        let elapsed = start.elapsed();
        let (rcode, answers) = match result {
            Ok(Ok(lookup)) => {
                let mut answers: Vec<String> = lookup
                    .answers()
                    .iter()
                    // A CNAME chain comes with the answer; clients use the records of the
                    // asked type, so those are the answer set.
                    .filter(|r| r.record_type() == self.record_type)
                    .map(|r| render(&r.data))
                    .collect();
                answers.sort();
                answers.dedup();
                (lookup.message().metadata.response_code, answers)
            }
            // The server replied, without records (NXDOMAIN, or NOERROR/NODATA) or with an error
            // rcode (SERVFAIL, REFUSED, …): reachable, not ok.
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(nr)))) => (nr.response_code, Vec::new()),
            Ok(Err(NetError::Dns(DnsError::ResponseCode(code)))) => (code, Vec::new()),
            Ok(Err(NetError::Timeout)) | Err(_) => {
                return unreachable(elapsed, format!("{}: {}", self.server, timeout_text(timeout)));
            }
            Ok(Err(e)) => return unreachable(elapsed, format!("{}: {}", self.server, error_chain(&e))),
        };
        let latency_ms = millis(elapsed);
        let error = judge(rcode, &answers, self.expect.as_deref());
        Sample {
            reachable: true,
            ok: error.is_none(),
            latency_ms,
            values: BTreeMap::from([
                ("latency_ms".to_string(), latency_ms),
                ("answers".to_string(), answers.len() as f64),
            ]),
            labels: BTreeMap::from([
                ("answers".to_string(), answers.join(",")),
                ("rcode".to_string(), rcode_name(rcode)),
            ]),
            error,
        }
    }
}

fn with_port(mut c: ConnectionConfig, port: u16) -> ConnectionConfig {
    c.port = port;
    c
}

/// Parses a record type name (case-insensitive) among [`RECORD_TYPES`].
pub fn parse_record_type(s: &str) -> Result<RecordType, String> {
    match s.to_ascii_uppercase().as_str() {
        "A" => Ok(RecordType::A),
        "AAAA" => Ok(RecordType::AAAA),
        "CNAME" => Ok(RecordType::CNAME),
        "TXT" => Ok(RecordType::TXT),
        "SOA" => Ok(RecordType::SOA),
        "NS" => Ok(RecordType::NS),
        _ => Err(format!("unknown record type {s:?}: expected one of {}", RECORD_TYPES.join(", "))),
    }
}

/// The canonical text of an expected answer, so that it compares equal to [`render`]ed data:
/// addresses in standard form, names lower-case and absolute.
pub fn normalize_answer(rt: RecordType, s: &str) -> Result<String, String> {
    let s = s.trim();
    match rt {
        RecordType::A => {
            s.parse::<Ipv4Addr>().map(|a| a.to_string()).map_err(|_| format!("{s:?} is not an IPv4 address"))
        }
        RecordType::AAAA => {
            s.parse::<Ipv6Addr>().map(|a| a.to_string()).map_err(|_| format!("{s:?} is not an IPv6 address"))
        }
        RecordType::CNAME | RecordType::NS => {
            let mut n = Name::from_ascii(s).map_err(|e| format!("{s:?} is not a DNS name: {e}"))?;
            n.set_fqdn(true);
            Ok(n.to_lowercase().to_string())
        }
        _ => Ok(s.to_string()),
    }
}

/// The text of one answer record, in the form [`normalize_answer`] produces.
fn render(data: &RData) -> String {
    match data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::CNAME(n) => n.0.to_lowercase().to_string(),
        RData::NS(n) => n.0.to_lowercase().to_string(),
        other => other.to_string(),
    }
}

/// Why a reply is not the expected one, or `None` when it is. Pure: `answers` and `expect` are
/// sorted, deduplicated, normalised sets.
fn judge(rcode: ResponseCode, answers: &[String], expect: Option<&[String]>) -> Option<String> {
    if rcode != ResponseCode::NoError {
        return Some(format!("rcode {}", rcode_name(rcode)));
    }
    if answers.is_empty() {
        return Some("no answers".to_string());
    }
    match expect {
        Some(want) if want != answers => {
            Some(format!("answers [{}], expected [{}]", answers.join(","), want.join(",")))
        }
        _ => None,
    }
}

/// The rcode mnemonic operators know from dig (`NOERROR`, `NXDOMAIN`, …).
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".to_string(),
        ResponseCode::FormErr => "FORMERR".to_string(),
        ResponseCode::ServFail => "SERVFAIL".to_string(),
        ResponseCode::NXDomain => "NXDOMAIN".to_string(),
        ResponseCode::NotImp => "NOTIMP".to_string(),
        ResponseCode::Refused => "REFUSED".to_string(),
        ResponseCode::NotAuth => "NOTAUTH".to_string(),
        ResponseCode::NotZone => "NOTZONE".to_string(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn answer_set_is_order_insensitive_and_exact() {
        let want = set(&["192.0.2.1", "198.51.100.1"]);
        assert_eq!(judge(ResponseCode::NoError, &set(&["198.51.100.1", "192.0.2.1"]), Some(&want)), None);
        let e = judge(ResponseCode::NoError, &set(&["192.0.2.1"]), Some(&want)).unwrap();
        assert!(e.contains("expected [192.0.2.1,198.51.100.1]"), "{e}");
        let e = judge(ResponseCode::NoError, &set(&["192.0.2.1", "198.51.100.1", "203.0.113.9"]), Some(&want));
        assert!(e.is_some());
        assert_eq!(judge(ResponseCode::NoError, &set(&["203.0.113.9"]), None), None);
    }

    #[test]
    fn empty_or_error_replies_are_not_ok() {
        assert_eq!(judge(ResponseCode::NXDomain, &[], None).unwrap(), "rcode NXDOMAIN");
        assert_eq!(judge(ResponseCode::NoError, &[], None).unwrap(), "no answers");
        assert_eq!(judge(ResponseCode::ServFail, &[], None).unwrap(), "rcode SERVFAIL");
    }

    #[test]
    fn expected_answers_are_normalised_like_rendered_ones() {
        assert_eq!(normalize_answer(RecordType::AAAA, "2001:DB8:0::1").unwrap(), "2001:db8::1");
        assert_eq!(render(&RData::AAAA("2001:db8::1".parse::<Ipv6Addr>().unwrap().into())), "2001:db8::1");
        assert_eq!(normalize_answer(RecordType::CNAME, "Wallet.EU.example").unwrap(), "wallet.eu.example.");
        let n = Name::from_ascii("wallet.eu.example.").unwrap();
        assert_eq!(render(&RData::CNAME(hickory_resolver::proto::rr::rdata::CNAME(n))), "wallet.eu.example.");
        assert!(normalize_answer(RecordType::A, "192.0.2.300").is_err());
        assert!(parse_record_type("mx").unwrap_err().contains("A, AAAA, CNAME, TXT, SOA, NS"));
        assert_eq!(parse_record_type("aaaa").unwrap(), RecordType::AAAA);
    }

    /// A tiny authoritative server on 127.0.0.1:0 (UDP): `wallet.gslb.example.` has two A
    /// records, every other name is NXDOMAIN.
    async fn tiny_server() -> SocketAddr {
        use hickory_resolver::proto::op::Message;
        use hickory_resolver::proto::rr::Record;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(req) = Message::from_vec(&buf[..n]) else { continue };
                let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
                resp.metadata.authoritative = true;
                let q = req.queries[0].clone();
                let name = q.name().clone();
                resp.add_query(q);
                if name.to_ascii().eq_ignore_ascii_case("wallet.gslb.example.") {
                    for ip in ["198.51.100.1", "192.0.2.1"] {
                        let a = hickory_resolver::proto::rr::rdata::A(ip.parse().unwrap());
                        resp.add_answer(Record::from_rdata(name.clone(), 5, RData::A(a)));
                    }
                } else {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = sock.send_to(&resp.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_from_a_real_server() {
        let addr = tiny_server().await;
        let t = Duration::from_secs(2);
        let want = ["192.0.2.1".to_string(), "198.51.100.1".to_string()];
        let mut p = DnsProbe::new(addr, "wallet.gslb.example", "A", Some(&want), t).unwrap();
        let s = p.run(t).await;
        assert!(s.reachable && s.ok, "{s:?}");
        assert_eq!(s.labels["answers"], "192.0.2.1,198.51.100.1");
        assert_eq!(s.labels["rcode"], "NOERROR");
        assert_eq!(s.values["answers"], 2.0);
        // Runs again on the same resolver (no cache: the server is asked each time).
        assert!(p.run(t).await.ok);

        let mut p = DnsProbe::new(addr, "wallet.gslb.example.", "A", Some(&want[..1]), t).unwrap();
        let s = p.run(t).await;
        assert!(s.reachable && !s.ok);
        assert!(s.error.unwrap().contains("expected [192.0.2.1]"));

        let mut p = DnsProbe::new(addr, "gone.gslb.example.", "A", None, t).unwrap();
        let s = p.run(t).await;
        assert!(s.reachable && !s.ok, "{s:?}");
        assert_eq!(s.labels["rcode"], "NXDOMAIN");
        assert_eq!(s.values["answers"], 0.0);
    }

    #[tokio::test]
    async fn silent_server_is_unreachable_within_timeout() {
        // A UDP socket that never answers, and no TCP listener on that port: no reply at all.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let mut p = DnsProbe::new(addr, "wallet.gslb.example.", "A", None, Duration::from_millis(300)).unwrap();
        let start = Instant::now();
        let s = p.run(Duration::from_millis(300)).await;
        assert!(start.elapsed() < Duration::from_millis(1000));
        assert!(!s.reachable && !s.ok, "{s:?}");
        assert!(s.error.unwrap().contains(&addr.to_string()));
    }
}
