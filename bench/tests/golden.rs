//! Golden bytes: the load tester's decoders read exactly what the server's encoders write
//! (`tests/golden/`, produced and checked by the server's `tests/golden.rs`), so the two never
//! drift apart. The expected contents are written out here independently.

use placecast_load::batch::{decode_batch, decode_snapshot, edits, unpack};

fn golden(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn batches_decode_to_the_known_edits() {
    for (stride, name) in [(4u8, "batch_stride4.bin"), (16, "batch_stride16.bin")] {
        let b = golden(name);
        let h = decode_batch(&b).unwrap();
        assert_eq!((h.stride, h.from, h.to, h.count), (stride, 41, 44, 3), "{name}");
        let got: Vec<(u32, u8)> = edits(&b, &h).map(unpack).collect();
        assert_eq!(got, [(5, 3), (999_999, 15), (7, 0)], "{name}");
    }
}

#[test]
fn the_snapshot_decodes_to_the_known_pixels() {
    let s = decode_snapshot(&golden("snapshot_5x3_4bpp.bin")).unwrap();
    assert_eq!((s.width, s.height, s.version), (5, 3, 1234));
    let want: Vec<u8> = (0..15u8).collect();
    assert_eq!(s.pixels, want);
}
