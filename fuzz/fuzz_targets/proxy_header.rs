#![no_main]
//! Any bytes at the start of a connection, from a trusted and an untrusted peer, under every
//! `--proxy-protocol` mode: never panics; a header never claims more bytes than given nor more
//! than MAX_HEADER; an untrusted peer is never given another address.
use libfuzzer_sys::fuzz_target;
use placecast::proxy_header::{Inspected, ProxyMode, ProxyPolicy, MAX_HEADER};
use std::net::{IpAddr, Ipv4Addr};

fuzz_target!(|data: &[u8]| {
    let trusted: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
    let stranger: IpAddr = Ipv4Addr::new(192, 0, 2, 7).into();
    for mode in [ProxyMode::Off, ProxyMode::V1, ProxyMode::V2, ProxyMode::Any] {
        let p = ProxyPolicy { mode, trusted: vec!["10.0.0.0/8".parse().unwrap()] };
        if let Ok(Inspected::Client { consumed, .. }) = p.inspect(trusted, data) {
            assert!(consumed <= data.len() && consumed <= MAX_HEADER);
        }
        if let Ok(Inspected::Client { client, consumed }) = p.inspect(stranger, data) {
            assert_eq!((client, consumed), (stranger, 0));
        }
    }
});
