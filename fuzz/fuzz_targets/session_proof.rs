#![no_main]
//! Any challenge and nonce strings (a POST /api/v1/session body): never panics, and nothing but
//! a challenge this server signed is ever redeemed.
use libfuzzer_sys::fuzz_target;
use placecast::pow::Proofs;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (challenge, nonce) = text.split_once('\n').unwrap_or((&text, "0"));
    let proofs = Proofs::new(b"fuzz-secret-0123456789abcdefghijklmnop");
    assert!(proofs.redeem(challenge, nonce, 1).is_err(), "a forged challenge was redeemed");
});
