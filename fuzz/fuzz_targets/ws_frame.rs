#![no_main]
//! Any bytes as client WebSocket frames: never panics, every frame lies inside the buffer, and
//! parsing always makes progress or stops.
use libfuzzer_sys::fuzz_target;
use placecast::ws::next_frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut pos = 0;
    while pos < buf.len() {
        match next_frame(&mut buf[pos..]) {
            Ok(Some(f)) => {
                assert!(f.len > 0 && pos + f.len <= data.len());
                assert!(f.payload.end <= f.len);
                pos += f.len;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
