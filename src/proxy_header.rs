//! The PROXY protocol (v1 text, v2 binary) at the start of a connection from a trusted load
//! balancer: who the client really is. Parsing is the `ppp` crate's; this module owns the policy.
//!
//! Policy (`--proxy-protocol`, `--trusted-proxies`):
//! - off: every connection is a direct client; the bytes are HTTP.
//! - on (v1, v2 or any): a connection from a trusted source MUST start with a header of an
//!   allowed version (a balancer that forgot `send-proxy` would otherwise make every client
//!   look like the balancer); a connection from any other source must NOT (a client could
//!   otherwise claim any address), and is served as a direct client when it sends none.
//! - A LOCAL command (a balancer's own health check) or an UNKNOWN/unspecified/unix address
//!   means "the connection itself": the balancer's address is used.
//!
//! Bounds: a header is at most `MAX_HEADER` bytes (v1's own limit is 107; v2 with TLVs is
//! refused beyond 536, decided from its length field before reading it) and must arrive within
//! the request timeout, like the request itself. The caller reads; this module never blocks.

use crate::client_addr::Cidr;
use ppp::PartialResult;
use std::net::IpAddr;
use thiserror::Error;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";
const V1_SIG: &[u8; 6] = b"PROXY ";
pub use crate::bounds::MAX_PROXY_HEADER as MAX_HEADER;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Off,
    V1,
    V2,
    Any,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProxyError {
    #[error("this connection comes from a trusted proxy but did not start with a PROXY protocol {0} header")]
    Missing(&'static str),
    #[error("a PROXY protocol header from {0}, which is not in --trusted-proxies")]
    Untrusted(IpAddr),
    #[error("a PROXY protocol {got} header where only {allowed} is accepted")]
    WrongVersion { got: &'static str, allowed: &'static str },
    #[error("the PROXY protocol header is over {MAX_HEADER} bytes")]
    TooLong,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
}

impl ProxyError {
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Missing(_) => "proxy_header_required",
            ProxyError::Untrusted(_) => "untrusted_proxy",
            ProxyError::WrongVersion { .. } => "proxy_version",
            ProxyError::TooLong | ProxyError::Malformed(_) => "bad_proxy_header",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPolicy {
    pub mode: ProxyMode,
    pub trusted: Vec<Cidr>,
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspected {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// The client is at `client`; the first `consumed` bytes were the header (0: none).
    Client { client: IpAddr, consumed: usize },
}

impl ProxyPolicy {
    pub fn off() -> Self {
        ProxyPolicy { mode: ProxyMode::Off, trusted: Vec::new() }
    }

    pub fn enabled(&self) -> bool {
        self.mode != ProxyMode::Off
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(peer))
    }

    fn allowed(&self) -> &'static str {
        match self.mode {
            ProxyMode::V1 => "v1",
            ProxyMode::V2 => "v2",
            _ => "v1 or v2",
        }
    }

    /// Decides who the client on a connection from `peer` is, given the bytes read so far.
    pub fn inspect(&self, peer: IpAddr, buf: &[u8]) -> Result<Inspected, ProxyError> {
        let direct = Inspected::Client { client: peer, consumed: 0 };
        if !self.enabled() {
            return Ok(direct);
        }
        let looks = signature(buf);
        if !self.trusts(peer) {
            return match looks {
                Sig::Undecided => Ok(Inspected::NeedMore),
                Sig::V1 | Sig::V2 => Err(ProxyError::Untrusted(peer)),
                Sig::None => Ok(direct),
            };
        }
        match (looks, self.mode) {
            (Sig::Undecided, _) => Ok(Inspected::NeedMore),
            (Sig::None, _) => Err(ProxyError::Missing(self.allowed())),
            (Sig::V1, ProxyMode::V2) => Err(ProxyError::WrongVersion { got: "v1", allowed: "v2" }),
            (Sig::V2, ProxyMode::V1) => Err(ProxyError::WrongVersion { got: "v2", allowed: "v1" }),
            (Sig::V1, _) => parse_v1(peer, buf),
            (Sig::V2, _) => parse_v2(peer, buf),
        }
    }
}

enum Sig {
    Undecided,
    None,
    V1,
    V2,
}

fn signature(buf: &[u8]) -> Sig {
    let prefix_of = |sig: &[u8]| buf.len() < sig.len() && sig.starts_with(buf);
    if buf.starts_with(V2_SIG) {
        Sig::V2
    } else if buf.starts_with(V1_SIG) {
        Sig::V1
    } else if prefix_of(V2_SIG) || prefix_of(V1_SIG) {
        Sig::Undecided
    } else {
        Sig::None
    }
}

fn parse_v1(peer: IpAddr, buf: &[u8]) -> Result<Inspected, ProxyError> {
    let window = &buf[..buf.len().min(MAX_HEADER)];
    let parsed = ppp::v1::Header::try_from(window);
    if parsed.is_incomplete() {
        return if window.len() >= 107 { Err(ProxyError::TooLong) } else { Ok(Inspected::NeedMore) };
    }
    let h = parsed.map_err(|e| ProxyError::Malformed(e.to_string()))?;
    let client = match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => IpAddr::V4(a.source_address),
        ppp::v1::Addresses::Tcp6(a) => IpAddr::V6(a.source_address),
        ppp::v1::Addresses::Unknown => peer,
    };
    Ok(Inspected::Client { client, consumed: h.header.len() })
}

fn parse_v2(peer: IpAddr, buf: &[u8]) -> Result<Inspected, ProxyError> {
    if buf.len() >= 16 {
        let declared = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if declared > MAX_HEADER {
            return Err(ProxyError::TooLong);
        }
    }
    let parsed = ppp::v2::Header::try_from(buf);
    if parsed.is_incomplete() {
        return Ok(Inspected::NeedMore);
    }
    let h = parsed.map_err(|e| ProxyError::Malformed(e.to_string()))?;
    let client = match (h.command, h.addresses) {
        (ppp::v2::Command::Local, _) => peer,
        (_, ppp::v2::Addresses::IPv4(a)) => IpAddr::V4(a.source_address),
        (_, ppp::v2::Addresses::IPv6(a)) => IpAddr::V6(a.source_address),
        _ => peer,
    };
    Ok(Inspected::Client { client, consumed: h.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: ProxyMode, trusted: &str) -> ProxyPolicy {
        ProxyPolicy {
            mode,
            trusted: trusted.split(',').filter(|s| !s.is_empty()).map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v2_tcp4(src: [u8; 4], tail: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0, 12]);
        b.extend_from_slice(&src);
        b.extend_from_slice(&[127, 0, 0, 1, 0x1f, 0x90, 0x1f, 0x90]);
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn v1_from_a_trusted_proxy_names_the_client() {
        let p = policy(ProxyMode::Any, "127.0.0.1");
        let raw = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\r\nGET / HTTP/1.1\r\n\r\n";
        let want = Inspected::Client { client: ip("203.0.113.7"), consumed: 44 };
        assert_eq!(p.inspect(ip("127.0.0.1"), raw), Ok(want));
        assert_eq!(p.inspect(ip("127.0.0.1"), &raw[..20]), Ok(Inspected::NeedMore));
        assert_eq!(p.inspect(ip("127.0.0.1"), b"PRO"), Ok(Inspected::NeedMore));
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            p.inspect(ip("127.0.0.1"), unknown),
            Ok(Inspected::Client { client: ip("127.0.0.1"), consumed: 15 })
        );
    }

    #[test]
    fn v2_from_a_trusted_proxy_names_the_client() {
        let p = policy(ProxyMode::V2, "127.0.0.0/8");
        let raw = v2_tcp4([198, 51, 100, 9], b"GET");
        assert_eq!(
            p.inspect(ip("127.0.0.1"), &raw),
            Ok(Inspected::Client { client: ip("198.51.100.9"), consumed: 28 })
        );
        for cut in [3, 12, 15, 20] {
            assert_eq!(p.inspect(ip("127.0.0.1"), &raw[..cut]), Ok(Inspected::NeedMore), "{cut}");
        }
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(p.inspect(ip("127.0.0.5"), &local), Ok(Inspected::Client { client: ip("127.0.0.5"), consumed: 16 }));
    }

    #[test]
    fn refusals() {
        let p = policy(ProxyMode::V2, "127.0.0.1");
        let get = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(p.inspect(ip("127.0.0.1"), get), Err(ProxyError::Missing("v2")));
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        assert!(matches!(p.inspect(ip("127.0.0.1"), v1), Err(ProxyError::WrongVersion { .. })));
        // An untrusted source may be a direct client, but may not claim an address.
        assert_eq!(p.inspect(ip("192.0.2.1"), get), Ok(Inspected::Client { client: ip("192.0.2.1"), consumed: 0 }));
        assert_eq!(
            p.inspect(ip("192.0.2.1"), &v2_tcp4([1, 2, 3, 4], b"")),
            Err(ProxyError::Untrusted(ip("192.0.2.1")))
        );
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(p.inspect(ip("127.0.0.1"), &huge), Err(ProxyError::TooLong));
        let mut bad = V2_SIG.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(p.inspect(ip("127.0.0.1"), &bad), Err(ProxyError::Malformed(_))));
        let any = policy(ProxyMode::Any, "127.0.0.1");
        let long = format!("PROXY TCP4 {} 1 2\r\n", "1".repeat(200));
        assert!(any.inspect(ip("127.0.0.1"), long.as_bytes()).is_err());
        let off = ProxyPolicy::off();
        assert_eq!(off.inspect(ip("127.0.0.1"), v1), Ok(Inspected::Client { client: ip("127.0.0.1"), consumed: 0 }));
    }

    /// The fuzz target's properties (fuzz/fuzz_targets/proxy_header.rs) over deterministic
    /// mutations of valid v1 and v2 headers, so CI checks them without a fuzzer.
    #[test]
    fn mutated_headers_never_panic_or_overclaim() {
        let trusted = ip("127.0.0.1");
        let stranger = ip("192.0.2.7");
        let seeds: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 5555 8080\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_tcp4([203, 0, 113, 7], b"GET / HTTP/1.1\r\n\r\n"),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..40_000 {
            let mut b = seeds[round % seeds.len()].clone();
            for _ in 0..=(rand() % 4) {
                let at = rand() as usize % (b.len() + 1);
                match rand() % 3 {
                    0 if at < b.len() => b[at] = rand() as u8,
                    1 => b.insert(at, rand() as u8),
                    _ => b.truncate(at),
                }
            }
            for mode in [ProxyMode::V1, ProxyMode::V2, ProxyMode::Any] {
                let p = policy(mode, "127.0.0.1");
                if let Ok(Inspected::Client { consumed, .. }) = p.inspect(trusted, &b) {
                    assert!(consumed <= b.len() && consumed <= MAX_HEADER, "{b:?}");
                }
                if let Ok(Inspected::Client { client, consumed }) = p.inspect(stranger, &b) {
                    assert_eq!((client, consumed), (stranger, 0), "{b:?}");
                }
            }
        }
    }
}
