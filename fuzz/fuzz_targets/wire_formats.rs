#![no_main]
//! Any bytes as a batch payload, a resize message, an `/api/v1/edits` body (several messages)
//! or a snapshot: never panics; a parsed batch's edits fit its count; a body's messages are
//! read to its end or stop at the first that does not parse, each one within the bytes.
use libfuzzer_sys::fuzz_target;
use placecast::protocol::{parse_snapshot, BatchView, ResizeView, StreamMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = BatchView::parse(data) {
        assert_eq!(b.iter().count(), b.count as usize);
    }
    if let Some(r) = ResizeView::parse(data) {
        assert_eq!(r.to, r.from + 1);
    }
    let mut at = 0;
    while at < data.len() {
        match StreamMessage::parse_prefix(&data[at..]) {
            Ok((m, len)) => {
                assert!(len > 0 && at + len <= data.len());
                let (from, to) = m.span();
                assert!(to >= from);
                at += len;
            }
            Err(_) => break,
        }
    }
    if let Some(s) = parse_snapshot(data) {
        assert_eq!(s.pixels.len(), s.width as usize * s.height as usize);
    }
});
