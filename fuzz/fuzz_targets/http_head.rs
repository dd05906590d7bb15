#![no_main]
//! Any bytes as an HTTP request head: never panics; a complete head never claims more bytes than given.
use libfuzzer_sys::fuzz_target;
use placecast::http::{parse_head, query_param, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Parsed::Head(req, n) = parse_head(data) {
        assert!(n <= data.len());
        let _ = query_param(&req.query, "since");
        let _ = query_param(&req.query, "token");
    }
});
