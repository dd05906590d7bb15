//! Anonymous sessions: `POST /api/v1/session` (per `--anonymous-sessions`: on, off, or proof of
//! work) and `GET /api/v1/session/challenge`, with the per-address session rate.
//!
//! Invariants: a session is minted only after the address's session rate and (in proof mode) a
//! valid, unused proof; the rate is charged before the proof is checked, so a script cannot
//! spend the server's CPU on bad proofs faster than its address rate allows.
//! Not here: signed-in users. A sign-in service (an account, a captcha, an account-age check)
//! mints tokens with the shared secret (`placecast mint-token` is the reference); placecast only
//! verifies them, and `--anonymous-sessions off` turns this route off.

use crate::client_addr::ClientAddr;
use crate::http::Response;
use crate::pow::{ProofError, SessionMode};
use crate::shared::Shared;
use crate::token::anonymous_user;

/// `GET /api/v1/session/challenge`.
pub fn challenge(shared: &Shared) -> Response {
    if shared.sessions.mode() == SessionMode::Off {
        return off();
    }
    let c = shared.proofs.challenge(shared.sessions.difficulty(), crate::now_ms());
    let body = serde_json::json!({
        "challenge": c.text,
        "difficulty": c.difficulty,
        "expires_at_ms": c.expires_at_ms,
        "algorithm": "sha256-leading-zero-bits",
    });
    Response::json(200, body.to_string()).header("Cache-Control", "no-store")
}

/// `POST /api/v1/session`.
pub fn create(shared: &Shared, client: &ClientAddr, body: &[u8]) -> Response {
    let mode = shared.sessions.mode();
    if mode == SessionMode::Off {
        return off();
    }
    let now = crate::now_ms();
    if let Err(e) = shared.admission.session(client.key, now) {
        shared.metrics.admission_refused(&e);
        shared.metrics.sessions_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return crate::http::admission_response(&e);
    }
    if mode == SessionMode::Proof {
        if let Err(e) = check_proof(shared, body, now) {
            shared.metrics.sessions_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Response::error(e.status(), e.code(), &e.to_string());
        }
    }
    mint(shared)
}

fn check_proof(shared: &Shared, body: &[u8], now: u64) -> Result<(), ProofError> {
    #[derive(serde::Deserialize)]
    struct Proof {
        challenge: String,
        nonce: String,
    }
    let p: Proof = serde_json::from_slice(body).map_err(|_| ProofError::Required)?;
    shared.proofs.redeem(&p.challenge, &p.nonce, now)
}

fn mint(shared: &Shared) -> Response {
    let user = anonymous_user();
    let ttl = shared.config.args.session_ttl;
    let expires = if ttl == 0 { 0 } else { crate::now_ms() / 1000 + ttl };
    match shared.signer.mint(&user, expires) {
        Ok(token) => {
            shared.metrics.sessions_created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Response::json(200, serde_json::json!({"token": token, "user": user, "expires_at": expires}).to_string())
        }
        Err(e) => Response::error(500, "internal", &e.to_string()),
    }
}

fn off() -> Response {
    Response::error(
        403,
        "anonymous_sessions_off",
        "this event has no anonymous sessions: sign in through the event's page to get a token",
    )
}
