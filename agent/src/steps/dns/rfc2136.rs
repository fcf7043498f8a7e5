//! [`Rfc2136Driver`]: a [`TrafficDriver`] sending RFC 2136 dynamic updates signed with TSIG
//! (RFC 8945), for any authoritative server that takes them (BIND, Knot, PowerDNS).
//!
//! Every change is ONE UPDATE message that deletes the A RRset and adds the new records: the
//! server applies a message atomically, while a delete and an add sent as two messages would
//! let clients see an empty answer in between. Updates go over TCP: no UDP retransmissions of a
//! signed update, and room for large record sets.

use super::{DriverError, Split, TrafficDriver};
use crate::checks::error_chain;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::{DnsHandle, DnsMultiplexer, NetError};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio_stream::StreamExt;

/// Allowed clock difference between the agent and the server, in seconds (RFC 8945 suggests
/// 300).
const FUDGE_SECONDS: u16 = 300;

/// Default bound on one update exchange (connect, send, reply).
pub const DEFAULT_UPDATE_TIMEOUT: Duration = Duration::from_secs(5);

/// One zone on one authoritative server, changed with TSIG-signed dynamic updates.
///
/// Steps use it for a `dns` resource with a TSIG key and no PowerDNS API (BIND, Knot, or
/// PowerDNS with `dnsupdate=yes`).
pub struct Rfc2136Driver {
    server: SocketAddr,
    zone: Name,
    signer: TSigner,
    timeout: Duration,
}

impl fmt::Debug for Rfc2136Driver {
    // By hand: the signer holds the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136Driver")
            .field("server", &self.server)
            .field("zone", &self.zone.to_string())
            .field("tsig_key", &self.signer.signer_name().to_string())
            .finish()
    }
}

impl Rfc2136Driver {
    /// A driver updating `zone` on `server`, signing with the TSIG key `tsig_name` using
    /// `tsig_algorithm` (`hmac-sha256`, `hmac-sha384` or `hmac-sha512`) and the raw (decoded)
    /// key bytes. Errors name the argument and never show the key.
    pub fn new(
        server: SocketAddr,
        zone: &str,
        tsig_name: &str,
        tsig_algorithm: &str,
        tsig_key: Vec<u8>,
    ) -> Result<Rfc2136Driver, String> {
        let zone = absolute(zone).map_err(|e| format!("zone: {e}"))?;
        let key_name = absolute(tsig_name).map_err(|e| format!("tsig_name: {e}"))?;
        let algorithm = match tsig_algorithm.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(format!(
                    "tsig_algorithm: {other:?} is not supported: use hmac-sha256, hmac-sha384 or hmac-sha512"
                ));
            }
        };
        if tsig_key.is_empty() {
            return Err("tsig_key: empty".into());
        }
        let signer =
            TSigner::new(tsig_key, algorithm, key_name, FUDGE_SECONDS).map_err(|e| format!("tsig_algorithm: {e}"))?;
        Ok(Rfc2136Driver { server, zone, signer, timeout: DEFAULT_UPDATE_TIMEOUT })
    }

    /// Sets the bound on one update exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> Rfc2136Driver {
        self.timeout = timeout;
        self
    }

    /// Replaces the A RRset of `name` with `ips` in one signed UPDATE.
    async fn replace(&self, name: &Name, ips: &[Ipv4Addr], ttl: u32) -> Result<(), DriverError> {
        let at = format!("RFC 2136 update of {name} at {}", self.server);
        if !self.zone.zone_of(name) {
            return Err(DriverError::Rejected(format!("{at}: {name} is not in zone {}", self.zone)));
        }
        let message = replace_message(&self.zone, name, ips, ttl);
        let reply = tokio::time::timeout(self.timeout, self.exchange(message))
            .await
            .map_err(|_| DriverError::Unavailable(format!("{at}: no reply within {} ms", self.timeout.as_millis())))?;
        match reply {
            Ok(ResponseCode::NoError) => Ok(()),
            Ok(code) => Err(rcode_error(code, &at)),
            Err(e) => Err(net_error(&e, &at)),
        }
    }

    /// Sends one signed message over a fresh TCP connection and returns the reply's rcode; the
    /// multiplexer verifies the reply's TSIG against the same key.
    async fn exchange(&self, message: Message) -> Result<ResponseCode, NetError> {
        let provider = TokioRuntimeProvider::default();
        let (connect, handle) = TcpClientStream::new(self.server, None, Some(self.timeout), provider);
        let stream = connect.await?;
        let mux = DnsMultiplexer::new(stream, handle).with_timeout(self.timeout).with_signer(self.signer.clone());
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(mux);
        let background = tokio::spawn(background);
        let mut replies = client.send(DnsRequest::new(message, DnsRequestOptions::default()));
        let reply = replies.next().await;
        background.abort();
        match reply {
            Some(Ok(r)) => Ok(r.metadata.response_code),
            Some(Err(e)) => Err(e),
            None => Err(NetError::from("connection closed without a reply")),
        }
    }
}

impl TrafficDriver for Rfc2136Driver {
    fn describe(&self) -> String {
        format!("RFC 2136 update to {} (TSIG {})", self.server, self.signer.signer_name())
    }

    async fn replace_a(&self, name: &Name, ips: &[Ipv4Addr], ttl: u32) -> Result<(), DriverError> {
        self.replace(name, ips, ttl).await
    }

    /// Writes [`Split::proportional`]: the nearest share that distinct records can express.
    async fn set_split(&self, name: &Name, split: &Split, ttl: u32) -> Result<f64, DriverError> {
        let (records, share) = split.proportional();
        self.replace(name, &records, ttl).await?;
        Ok(share)
    }
}

/// The UPDATE message: zone section = the zone's SOA; update section = "delete the A RRset of
/// `name`" (class ANY, TTL 0, empty rdata; RFC 2136 §2.5.2) followed by one add per address.
/// No prerequisites: the replacement is unconditional, so repeating it is harmless.
fn replace_message(zone: &Name, name: &Name, ips: &[Ipv4Addr], ttl: u32) -> Message {
    let mut zone_query = Query::new();
    zone_query.set_name(zone.clone()).set_query_class(DNSClass::IN).set_query_type(RecordType::SOA);
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    message.add_zone(zone_query);
    let mut delete = Record::update0(name.clone(), 0, RecordType::A).into_record_of_rdata();
    delete.dns_class = DNSClass::ANY;
    message.add_update(delete);
    for ip in ips {
        message.add_update(Record::from_rdata(name.clone(), ttl, RData::A(A(*ip))));
    }
    message
}

/// An error reply. NOTAUTH is how servers answer an unknown key or a bad signature; REFUSED
/// one that the zone's policy does not allow.
fn rcode_error(code: ResponseCode, at: &str) -> DriverError {
    match code {
        ResponseCode::NotAuth | ResponseCode::BADSIG | ResponseCode::BADKEY | ResponseCode::BADTIME => {
            DriverError::Auth(format!("{at}: the server refused the TSIG key ({code})"))
        }
        ResponseCode::ServFail => DriverError::Unavailable(format!("{at}: SERVFAIL")),
        other => DriverError::Rejected(format!("{at}: the server refused the update ({other})")),
    }
}

/// A failed exchange. A server that rejects the signature answers unsigned (RFC 8945 §5.3.2),
/// and hickory then fails the reply with a TSIG verification error rather than returning the
/// rcode; that is an authentication failure (fix the key), not something to retry. hickory has
/// no typed variant for it, so the text decides.
fn net_error(e: &NetError, at: &str) -> DriverError {
    let text = error_chain(e);
    let lower = text.to_ascii_lowercase();
    if lower.contains("tsig") || lower.contains("hmac") {
        DriverError::Auth(format!(
            "{at}: TSIG authentication failed: the server did not accept the key or signed no reply ({text})"
        ))
    } else {
        DriverError::Unavailable(format!("{at}: {text}"))
    }
}

/// `s` as an absolute name.
pub(super) fn absolute(s: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(s.trim()).map_err(|e| format!("{s:?} is not a DNS name: {e}"))?;
    if n.is_root() {
        return Err(format!("{s:?} is the root"));
    }
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_message_deletes_then_adds() {
        let zone = absolute("gslb.example").unwrap();
        let name = absolute("wallet.gslb.example").unwrap();
        let ips: Vec<Ipv4Addr> = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        let m = replace_message(&zone, &name, &ips, 5);
        assert_eq!(m.metadata.op_code, OpCode::Update);
        let updates = m.updates();
        assert_eq!(updates.len(), 3);
        assert_eq!((updates[0].dns_class, updates[0].ttl, updates[0].record_type()), (DNSClass::ANY, 0, RecordType::A));
        assert!(updates[1..].iter().all(|r| r.dns_class == DNSClass::IN && r.ttl == 5));
        // It encodes (the signer appends the TSIG record when it is sent).
        assert!(m.to_vec().is_ok());
    }

    #[test]
    fn bad_arguments_are_named_and_keys_never_shown() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let key = b"s3cret-key-bytes".to_vec();
        let e = Rfc2136Driver::new(server, "gslb.example", "k", "hmac-md5", key.clone()).unwrap_err();
        assert!(e.starts_with("tsig_algorithm:"), "{e}");
        assert!(
            Rfc2136Driver::new(server, "bad..zone", "k", "hmac-sha256", key.clone()).unwrap_err().starts_with("zone:")
        );
        assert!(
            Rfc2136Driver::new(server, "gslb.example", "k", "hmac-sha256", vec![])
                .unwrap_err()
                .starts_with("tsig_key:")
        );
        let d = Rfc2136Driver::new(server, "gslb.example", "drcut-key", "HMAC-SHA256.", key).unwrap();
        let dump = format!("{d:?}");
        assert!(dump.contains("drcut-key.") && !dump.contains("s3cret"), "{dump}");
    }

    #[test]
    fn replies_are_classified() {
        assert!(matches!(rcode_error(ResponseCode::NotAuth, "x"), DriverError::Auth(_)));
        assert!(matches!(rcode_error(ResponseCode::Refused, "x"), DriverError::Rejected(_)));
        let e = net_error(&NetError::from("missing tsig from response that must be authenticated"), "x");
        assert!(matches!(e, DriverError::Auth(_)), "{e}");
        assert!(matches!(net_error(&NetError::Timeout, "x"), DriverError::Unavailable(_)));
    }
}
