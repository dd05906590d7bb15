//! Golden bytes: the server's encoders must produce exactly the files in `tests/golden/`, which
//! the load tester's decoder reads in `bench/tests/golden.rs`, so the two never drift apart.
//! The expected contents are written out independently in both tests (PROTOCOL.md's layouts).
//! To regenerate after a deliberate format change: `PLACECAST_BLESS=1 cargo test --test golden`.

use placecast::canvas::{Canvas, Geometry, RPLACE_2017_PALETTE};
use placecast::protocol::{encode_batch, pack_edit, server_frame_payload};
use placecast::snapshot::Snapshot;
use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn check(name: &str, bytes: &[u8]) {
    let path = golden(name);
    if std::env::var_os("PLACECAST_BLESS").is_some() {
        std::fs::write(&path, bytes).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes,
        &want[..],
        "{name} changed: a wire format changed (PROTOCOL.md, the load tester, the web client)"
    );
}

/// The edits of both batch files: (pixel index, color) at versions 42, 43 and 44 of (41, 44].
const EDITS: [(u32, u8); 3] = [(5, 3), (999_999, 15), (7, 0)];

#[test]
fn batches_match_the_golden_files() {
    let packed: Vec<u32> = EDITS.iter().map(|&(i, c)| pack_edit(i, c)).collect();
    for (stride, name) in [(4u8, "batch_stride4.bin"), (16, "batch_stride16.bin")] {
        let frame = encode_batch(41, 44, &packed, stride);
        let payload = server_frame_payload(&frame);
        // Hand-checked against PROTOCOL.md: type, stride, reserved, from, to, count, edits.
        assert_eq!(payload[0], 0x01);
        assert_eq!(payload[1], stride);
        assert_eq!(u64::from_le_bytes(payload[4..12].try_into().unwrap()), 41);
        assert_eq!(u64::from_le_bytes(payload[12..20].try_into().unwrap()), 44);
        assert_eq!(u32::from_le_bytes(payload[20..24].try_into().unwrap()), 3);
        assert_eq!(payload.len(), 24 + 3 * stride as usize);
        assert_eq!(u32::from_le_bytes(payload[24..28].try_into().unwrap()), (5 << 5) | 3);
        check(name, payload);
    }
}

#[test]
fn the_snapshot_matches_the_golden_file() {
    // A 5x3 canvas (odd pixel count: the last 4-bit nibble is padding), pixels 0..15 wrapping.
    let g = Geometry::new(5, 3, RPLACE_2017_PALETTE.to_vec()).unwrap();
    let mut c = Canvas::new(g);
    for i in 0..15u32 {
        c.set(i, (i % 16) as u8);
    }
    let s = Snapshot::build(&c, 1234);
    assert_eq!(&s.binary[0..4], b"PCS1");
    check("snapshot_5x3_4bpp.bin", &s.binary);
}
