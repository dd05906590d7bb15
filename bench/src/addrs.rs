//! Addresses: the safety rule for targets (loopback only unless an address is allowed
//! explicitly) and the parsing of source-address lists and ranges
//! (`127.0.0.1-127.0.0.255,127.0.1.1`) used to get past 64k ports per source address.

use crate::error::LoadError;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Most source addresses one range may expand to.
pub const MAX_SOURCE_ADDRS: usize = 65_536;

/// Accepts `target` only if it is loopback or listed in `allowed` (by IP or IP:port).
pub fn check_target(target: SocketAddr, allowed: &[String]) -> Result<(), LoadError> {
    if target.ip().is_loopback() {
        return Ok(());
    }
    let ip = target.ip().to_string();
    let full = target.to_string();
    if allowed.iter().any(|a| a.trim() == ip || a.trim() == full) {
        return Ok(());
    }
    Err(LoadError::TargetNotAllowed(target.to_string()))
}

/// The source addresses `auto` stands for: 16 loopback addresses for an IPv4 loopback target
/// (Linux answers on all of 127.0.0.0/8, and one address runs into port trouble past about half
/// its local port range), `::1` for `[::1]`, and none (the kernel's choice) otherwise.
pub fn auto_sources(target: SocketAddr) -> Vec<IpAddr> {
    match target.ip() {
        IpAddr::V4(a) if a.is_loopback() => (1..=16u8).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect(),
        IpAddr::V6(a) if a.is_loopback() => vec![IpAddr::V6(a)],
        _ => Vec::new(),
    }
}

/// Parses `auto` or a comma-separated list of addresses and inclusive IPv4 ranges `A-B`.
pub fn parse_sources_for(spec: &str, target: SocketAddr) -> Result<Vec<IpAddr>, LoadError> {
    if spec.trim() == "auto" {
        return Ok(auto_sources(target));
    }
    parse_sources(spec)
}

/// Parses a comma-separated list of addresses and inclusive IPv4 ranges `A-B`.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, LoadError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad(part))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad(part))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || (b - a) as usize >= MAX_SOURCE_ADDRS {
                return Err(LoadError::Args(format!(
                    "source range {part} is empty or longer than {MAX_SOURCE_ADDRS} addresses"
                )));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(part.parse().map_err(|_| bad(part))?);
        }
        if out.len() > MAX_SOURCE_ADDRS {
            return Err(LoadError::Args(format!("more than {MAX_SOURCE_ADDRS} source addresses")));
        }
    }
    if out.is_empty() {
        return Err(LoadError::Args("--source-addrs is empty".into()));
    }
    Ok(out)
}

fn bad(part: &str) -> LoadError {
    LoadError::Args(format!("cannot parse source address or range {part:?}"))
}

/// Checks that the source addresses fit the target's family and are loopback when the target
/// is (a loopback server cannot be reached from another address anyway).
pub fn check_sources(sources: &[IpAddr], target: SocketAddr) -> Result<(), LoadError> {
    for s in sources {
        if s.is_ipv4() != target.is_ipv4() {
            return Err(LoadError::Args(format!("source address {s} and target {target} are of different families")));
        }
        if target.ip().is_loopback() && !s.is_loopback() {
            return Err(LoadError::Args(format!("source address {s} is not loopback but the target {target} is")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_unless_allowed() {
        assert!(check_target("127.0.0.1:80".parse().unwrap(), &[]).is_ok());
        assert!(check_target("127.9.9.9:80".parse().unwrap(), &[]).is_ok());
        assert!(check_target("[::1]:80".parse().unwrap(), &[]).is_ok());
        assert!(check_target("10.0.0.5:80".parse().unwrap(), &[]).is_err());
        assert!(check_target("10.0.0.5:80".parse().unwrap(), &["10.0.0.5".into()]).is_ok());
        assert!(check_target("10.0.0.5:80".parse().unwrap(), &["10.0.0.5:81".into()]).is_err());
    }

    #[test]
    fn ranges_and_lists() {
        let v = parse_sources("127.0.0.1-127.0.0.3, 127.0.1.1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[2].to_string(), "127.0.0.3");
        assert_eq!(parse_sources("127.0.0.1-127.0.0.255").unwrap().len(), 255);
        assert!(parse_sources("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_sources("nope").is_err());
        assert!(parse_sources("").is_err());
        let t: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(check_sources(&v, t).is_ok());
        assert!(check_sources(&["10.1.1.1".parse().unwrap()], t).is_err());
        assert_eq!(parse_sources_for("auto", t).unwrap().len(), 16);
        assert_eq!(parse_sources_for("auto", "[::1]:80".parse().unwrap()).unwrap().len(), 1);
        assert!(parse_sources_for("auto", "10.0.0.1:80".parse().unwrap()).unwrap().is_empty());
    }
}
