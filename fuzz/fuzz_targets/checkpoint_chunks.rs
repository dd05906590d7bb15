#![no_main]
//! Any messages on the published-checkpoint topic (a joining node reads them from the broker):
//! reassembly never panics, a checkpoint comes out only within `MAX_CHECKPOINT_BYTES`, and
//! whatever else is on the topic cannot keep a real checkpoint from assembling (short of
//! flooding past `MAX_SETS`). The input is a series of messages, each a 2-byte little-endian
//! length and its bytes; the first byte sizes a real checkpoint and, when odd, mixes its chunks
//! in between the fuzzed messages.
use libfuzzer_sys::fuzz_target;
use placecast::edit_log::checkpoint_chunks::{chunks, Assembler, MAX_CHECKPOINT_BYTES, MAX_SETS};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let real_version = 1 + mode as u64;
    let real: Vec<u8> = (0..(mode as usize * 37)).map(|i| i as u8).collect();
    let real_chunks = if mode & 1 == 1 { chunks(7, real_version, &real) } else { Vec::new() };
    let mut asm = Assembler::default();
    let (mut fuzzed, mut fed) = (0usize, 0usize);
    while rest.len() >= 2 || fed < real_chunks.len() {
        if rest.len() >= 2 {
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            rest = &rest[2..];
            let msg = &rest[..len.min(rest.len())];
            rest = &rest[msg.len()..];
            asm.add(msg);
            fuzzed += 1;
        }
        if let Some((_, c)) = real_chunks.get(fed) {
            asm.add(c);
            fed += 1;
        }
    }
    if let Some((_, bytes)) = asm.best() {
        assert!(bytes.len() <= MAX_CHECKPOINT_BYTES);
    }
    if !real_chunks.is_empty() && fuzzed < MAX_SETS {
        let best = asm.best().map(|(v, _)| *v);
        assert!(best >= Some(real_version), "the real checkpoint at {real_version} was lost: best {best:?}");
    }
});
