#![no_main]
//! Any bytes as a batch payload or a snapshot: never panics; a parsed batch's edits fit its count.
use libfuzzer_sys::fuzz_target;
use placecast::protocol::{parse_snapshot, BatchView};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = BatchView::parse(data) {
        assert_eq!(b.iter().count(), b.count as usize);
    }
    if let Some(s) = parse_snapshot(data) {
        assert_eq!(s.pixels.len(), s.width as usize * s.height as usize);
    }
});
