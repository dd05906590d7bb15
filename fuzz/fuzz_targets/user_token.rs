#![no_main]
//! Any bytes as a user token (an `Authorization: Bearer` header, a `?token=` or an `auth`
//! message): never panics, never verifies without this server's signature, and a token this
//! server minted verifies to exactly the user and claims it was minted with.
use libfuzzer_sys::fuzz_target;
use placecast::token::Signer;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let signer = Signer::new(b"fuzz-secret-0123456789abcdefghijklmnop");
    assert!(signer.verify(&text, 0).is_err(), "an unsigned token verified");
    // The same bytes as a user and claims: what mints, verifies back to itself.
    let mut parts = text.split('|');
    let user = parts.next().unwrap_or("");
    let claims: Vec<String> = parts.map(str::to_string).collect();
    if let Ok(t) = signer.mint_with_claims(user, 0, &claims) {
        let u = signer.verify(&t, 0).expect("a minted token verifies");
        assert_eq!((u.name.as_str(), u.claims), (user, claims));
    }
});
