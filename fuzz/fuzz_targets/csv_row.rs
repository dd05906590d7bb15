#![no_main]
//! Any CSV header and row (`placecast import` reads outside files): never panics, and a row that
//! parses has coordinates a canvas can hold and a time that formats back to itself (to the ms).
use libfuzzer_sys::fuzz_target;
use placecast::tools::csv::{format_time, parse_row, parse_time, Columns};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (header, row) = text.split_once('\n').unwrap_or(("timestamp,user_hash,x,y,color,version", &text));
    let Ok(cols) = Columns::from_header(header) else { return };
    if let Ok(r) = parse_row(&cols, row) {
        assert!(r.x <= u16::MAX as u32 && r.y <= u16::MAX as u32);
        if r.ts_ms < 253_402_300_800_000 {
            assert_eq!(parse_time(&format_time(r.ts_ms)).ok(), Some(r.ts_ms));
        }
    }
});
