//! Who the client is: its address (from the socket, or from a trusted proxy's PROXY header) and
//! the key every per-address limit is counted under.
//!
//! Invariants: IPv6 clients are grouped by their /64 (one subscriber usually holds a whole /64,
//! so per-address limits per /128 would be free to evade); an IPv4-mapped IPv6 address counts as
//! the IPv4 address it maps. The key is a 32-bit keyed hash so it fits the 72-byte connection
//! entry (see `hub::Conn`); the key is random per process, so a client cannot choose addresses
//! that collide with a victim's. Two unrelated addresses share a bucket with probability about
//! n / 2^32 for n active addresses (2.3e-4 at a million).
//! It does not parse PROXY headers (`proxy_header.rs` does).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;

/// The per-address limit key (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey(pub u32);

/// A client as limits and logs see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    pub key: AddrKey,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        let ip = canonical(ip);
        ClientAddr { ip, key: key_of(ip) }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.ip.fmt(f)
    }
}

/// IPv4-mapped IPv6 addresses become IPv4 (a dual-stack listener reports IPv4 clients so).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The 64 bits a limit groups by: the IPv4 address tagged, or the IPv6 /64 prefix.
fn group_bits(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => 0xffff_ffff_0000_0000 | u32::from(v4) as u64,
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    }
}

fn process_key() -> &'static [u64; 2] {
    static KEY: OnceLock<[u64; 2]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut b = [0u8; 16];
        // Without randomness the keyed hash still works, only predictably; never fail a start for it.
        let _ = getrandom::fill(&mut b);
        [u64::from_le_bytes(b[..8].try_into().unwrap()), u64::from_le_bytes(b[8..].try_into().unwrap())]
    })
}

/// A keyed 64-bit mix (two rounds of a multiply-xorshift, as in SplitMix/wyhash), folded to 32
/// bits. Not a MAC: enough that the mapping is unpredictable without the process's key.
fn key_of(ip: IpAddr) -> AddrKey {
    let k = process_key();
    let mut x = group_bits(ip) ^ k[0];
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= k[1];
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    AddrKey((x ^ (x >> 32)) as u32)
}

/// A CIDR block of trusted proxies: `10.0.0.0/8`, `::1/128`, or a bare address (/32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    mask: u128,
    v4: bool,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(v4) if self.v4 => (u32::from(v4) as u128 & self.mask) == self.net,
            IpAddr::V6(v6) if !self.v4 => (u128::from(v6) & self.mask) == self.net,
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let ip = canonical(ip);
        let (bits, value, v4) = match ip {
            IpAddr::V4(v4) => (32u32, u32::from(v4) as u128, true),
            IpAddr::V6(v6) => (128u32, u128::from(v6), false),
        };
        let len = match len {
            None => bits,
            Some(l) => match l.parse::<u32>() {
                Ok(n) if n <= bits && l == n.to_string() => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {bits}")),
            },
        };
        let full: u128 = if bits == 32 { u32::MAX as u128 } else { u128::MAX };
        let mask = if len == 0 { 0 } else { (full << (bits - len)) & full };
        if value & !mask != 0 {
            return Err(format!("{s:?} has host bits set; did you mean {}/{len}?", network(ip, mask)));
        }
        Ok(Cidr { net: value & mask, mask, v4 })
    }
}

fn network(ip: IpAddr, mask: u128) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(((u32::from(v4) as u128 & mask) as u32).into()),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_groups_by_64_and_mapped_is_v4() {
        let a = ClientAddr::new(ip("2001:db8:1:2::1"));
        let b = ClientAddr::new(ip("2001:db8:1:2:ffff::9"));
        let c = ClientAddr::new(ip("2001:db8:1:3::1"));
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        let m = ClientAddr::new(ip("::ffff:192.0.2.7"));
        assert_eq!(m.ip, ip("192.0.2.7"));
        assert_eq!(m.key, ClientAddr::new(ip("192.0.2.7")).key);
        assert_ne!(ClientAddr::new(ip("192.0.2.7")).key, ClientAddr::new(ip("192.0.2.8")).key);
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/+8", "nope", "::/129", "1.2.3.4/ 8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
