//! Control entries against the real binary on the embedded log: pause and resume, bans, the end
//! of the event and the cooldown, each an entry of the ordered log (its version in the answer,
//! in the audit list, refused placements saying why over HTTP and WebSocket), bad requests
//! writing nothing, every switch surviving a SIGKILL, and a log written before control entries
//! existed (format 1, `tests/golden/format1/`) opening unchanged. The same on a Kafka cluster is
//! in `tests/kafka.rs`.
mod common;

use common::{free_port, wait_for, Model, Server, TEST_SECRET};

const ADMIN: &str = "admin-secret-1-0123456789abcdefghijklmnop";

fn token(user: &str) -> String {
    placecast::token::Signer::new(TEST_SECRET.as_bytes()).mint(user, 0).unwrap()
}

fn flags() -> Vec<&'static str> {
    vec!["--width", "16", "--height", "8", "--cooldown", "0", "--admin-token", ADMIN]
}

fn admin(s: &Server, action: &str, body: &str) -> common::HttpResponse {
    let auth = format!("Bearer {ADMIN}");
    s.http("POST", &format!("/api/v1/admin/{action}"), &[("Authorization", &auth)], body.as_bytes())
}

fn head(s: &Server) -> u64 {
    s.http("GET", "/healthz", &[], b"").json()["version"].as_u64().unwrap()
}

fn audit(s: &Server) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN}");
    let r = s.http("GET", "/api/v1/admin/audit", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Posts a control entry and returns its version.
fn control(s: &Server, action: &str, body: &str) -> u64 {
    let r = admin(s, action, body);
    assert_eq!(r.status, 200, "{action}: {}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!((j["action"].as_str(), j["applied"].as_bool()), (Some(action), Some(true)));
    j["version"].as_u64().unwrap()
}

fn refused(r: &common::HttpResponse) -> (u16, String) {
    (r.status, r.error_code())
}

#[test]
fn switches_and_bans_are_log_entries_refusals_say_why_and_a_kill_keeps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = Server::start_in(tmp.path(), port, &flags());
    let (alice, bob) = (token("alice"), token("bob"));
    assert_eq!(s.place(&alice, 0, 0, 1).status, 200);
    assert_eq!(s.place(&bob, 1, 0, 2).status, 200);

    // Pause: one entry at the next version; placements over HTTP and WebSocket refused.
    let v = control(&s, "pause", "");
    assert_eq!(v, 3, "the entry is a version of the log");
    assert_eq!(refused(&s.place(&alice, 2, 0, 3)), (423, "paused".into()));
    let mut ws = s.ws(&format!("?token={bob}"));
    ws.send_text(r#"{"type":"place","x":2,"y":0,"color":3,"id":7}"#);
    let e = ws.next_text("error");
    assert_eq!((e["code"].as_str(), e["id"].as_u64()), (Some("paused"), Some(7)), "{e}");
    let info = s.http("GET", "/api/v1/canvas/info", &[], b"").json();
    assert_eq!(info["paused"], true);
    assert_eq!(control(&s, "resume", "{}"), 4);
    assert_eq!(s.place(&alice, 2, 0, 3).status, 200);

    // Ban by name: refused for that user only; unban gives it back.
    let ban = control(&s, "ban", r#"{"user":"alice"}"#);
    assert_eq!(refused(&s.place(&alice, 3, 0, 4)), (403, "banned".into()));
    assert_eq!(s.place(&bob, 3, 0, 4).status, 200);
    // The key form, as lookups and exports show it, names the same user.
    let key = format!("{:016x}", placecast::token::user_key("alice"));
    control(&s, "unban", &format!(r#"{{"user_key":"{key}"}}"#));
    assert_eq!(s.place(&alice, 3, 0, 5).status, 200);
    control(&s, "ban", r#"{"user":"alice"}"#);

    // The cooldown, live.
    control(&s, "cooldown", r#"{"seconds":600}"#);
    assert_eq!(s.place(&bob, 4, 0, 1).status, 200);
    assert_eq!(refused(&s.place(&bob, 4, 0, 1)).1, "cooldown");
    assert_eq!(s.http("GET", "/api/v1/canvas/info", &[], b"").json()["cooldown_ms"], 600_000);
    control(&s, "cooldown", r#"{"seconds":0}"#);

    // Bad requests write nothing to the log.
    let before = head(&s);
    for (action, body, status, code) in [
        ("ban", r#"{"user":"nobody-placed-yet"}"#, 404, "unknown_user"),
        ("ban", r#"{"user":"alice","user_key":"0000000000000001"}"#, 400, "bad_body"),
        ("ban", r#"{"user_key":"xyz"}"#, 400, "bad_body"),
        ("ban", r#"{"user":"alice","revert_since_ms":1}"#, 400, "bad_body"),
        ("cooldown", r#"{"seconds":-1}"#, 400, "bad_json"),
        ("cooldown", r#"{"seconds":99999999999}"#, 400, "bad_body"),
        ("pause", "now", 400, "bad_body"),
        ("end", r#"{"at":1}"#, 400, "bad_json"),
    ] {
        let r = admin(&s, action, body);
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{action} {body}");
    }
    let wrong = s.http("POST", "/api/v1/admin/pause", &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(wrong.status, 401);
    assert_eq!(s.http("POST", "/api/v1/admin/pause", &[], b"").status, 401);
    assert_eq!(head(&s), before, "nothing was logged");

    // The end of the event: placements at or after its time refused, with `ended`.
    let end = control(&s, "end", &format!(r#"{{"at_ms":{}}}"#, placecast::now_ms()));
    assert_eq!(refused(&s.place(&bob, 5, 0, 1)), (410, "ended".into()));
    assert!(s.http("GET", "/api/v1/canvas/info", &[], b"").json()["end_at_ms"].is_u64());

    // The audit list: every entry, newest first, with its version.
    let a = audit(&s);
    let actions: Vec<&str> = a["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["end", "cooldown", "cooldown", "ban", "unban", "ban", "resume", "pause"]);
    assert_eq!(a["entries"][0]["version"].as_u64(), Some(end));
    assert_eq!(a["entries"][5]["version"].as_u64(), Some(ban));
    assert_eq!(a["entries"][5]["user"], "alice");
    assert_eq!(a["entries"][5]["by"], "operator");
    assert_eq!(a["switches"]["banned"], 1);
    let canvas = s.snapshot();

    // A SIGKILL: the restarted node replays the log to the same switches and audit list.
    s.kill9();
    let s = Server::start_in(tmp.path(), port, &flags());
    assert_eq!(audit(&s)["entries"], a["entries"]);
    assert_eq!(refused(&s.place(&bob, 5, 0, 1)), (410, "ended".into()));
    let again = s.snapshot();
    assert_eq!((again.version, again.pixels), (canvas.version, canvas.pixels));
    // Lifting the end lets placements in again, except for the banned user.
    control(&s, "end", &format!(r#"{{"at_ms":{}}}"#, placecast::now_ms() + 3_600_000));
    assert_eq!(s.place(&bob, 5, 0, 1).status, 200);
    assert_eq!(refused(&s.place(&alice, 5, 0, 1)), (403, "banned".into()));
    // A control entry changes no pixel and is nobody's edit: the pixel lookup skips it.
    let p = s.http("GET", "/api/v1/pixel?x=5&y=0&history=5", &[], b"").json();
    assert_eq!(p["history"].as_array().unwrap().len(), 1);
}

#[test]
fn a_log_written_before_control_entries_opens_unchanged() {
    // `tests/golden/format1/` was written by the binary of commit 22b44b1 (log format 1): five
    // edits by alice and bob on an 8x4 canvas.
    let tmp = tempfile::tempdir().unwrap();
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/format1");
    for f in ["edits.log", "users.names"] {
        std::fs::copy(golden.join(f), tmp.path().join(f)).unwrap();
    }
    let s = Server::start_in(tmp.path(), free_port(), &["--width", "8", "--height", "4", "--cooldown", "0"]);
    let snap = s.snapshot();
    assert_eq!(snap.version, 5);
    let mut want = vec![0u8; 32];
    for (x, y, c) in [(1, 0, 5), (2, 1, 3), (1, 0, 7), (7, 3, 15), (0, 0, 2)] {
        want[y * 8 + x] = c;
    }
    assert_eq!(snap.pixels, want);
    let p = s.http("GET", "/api/v1/pixel?x=1&y=0&history=5", &[], b"").json();
    let who: Vec<&str> = p["history"].as_array().unwrap().iter().map(|e| e["user"].as_str().unwrap()).collect();
    assert_eq!(who, ["bob", "alice"]);
    // It takes new edits and control entries after its old ones.
    assert_eq!(s.place(&token("carol"), 3, 3, 1).status, 200);
    wait_for(10, "version 6", || (s.snapshot().version == 6).then_some(()));
}

/// `placecast role-token NAME --role R`: the token on stdout, the roles-file entry on stderr.
fn role_token(name: &str, role: &str) -> (String, String) {
    let out = std::process::Command::new(common::bin()).args(["role-token", name, "--role", role]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8(out.stderr).unwrap();
    let entry = err[err.find("[[holder]]").expect("an entry")..].to_string();
    (String::from_utf8(out.stdout).unwrap().trim().to_string(), entry)
}

fn as_holder(s: &Server, token: &str, action: &str, body: &str) -> common::HttpResponse {
    let auth = format!("Bearer {token}");
    s.http("POST", &format!("/api/v1/admin/{action}"), &[("Authorization", &auth)], body.as_bytes())
}

#[test]
fn named_moderators_and_operators_act_within_their_roles_and_the_audit_names_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (mod_token, mod_entry) = role_token("mod-mia", "moderator");
    let (op_token, op_entry) = role_token("op-oli", "operator");
    let roles = tmp.path().join("roles.toml");
    std::fs::write(&roles, format!("{mod_entry}\n{op_entry}")).unwrap();
    let data = tmp.path().join("data");
    let roles_flag = roles.to_str().unwrap();
    let s = Server::start_in(
        &data,
        free_port(),
        &["--width", "16", "--height", "8", "--cooldown", "0", "--roles", roles_flag],
    );
    let eve = token("eve");
    assert_eq!(s.place(&eve, 0, 0, 1).status, 200);

    // A moderator bans and protects; pausing needs an operator.
    assert_eq!(as_holder(&s, &mod_token, "ban", r#"{"user":"eve"}"#).status, 200);
    for (action, body) in [("pause", ""), ("resize", r#"{"width":32,"height":8}"#)] {
        let r = as_holder(&s, &mod_token, action, body);
        assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden_role"), "{action}");
    }
    let r = as_holder(&s, &mod_token, "pause", "");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("mod-mia is a moderator"));
    assert_eq!(as_holder(&s, &op_token, "unban", r#"{"user":"eve"}"#).status, 200, "operators may moderate");
    assert_eq!(as_holder(&s, "pcr-not-a-token", "pause", "").status, 401);

    // A protected area: users refused, the moderator's own user token (same name) allowed.
    let r = as_holder(&s, &mod_token, "protect", r#"{"x":4,"y":2,"w":3,"h":2}"#);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(refused(&s.place(&eve, 5, 3, 2)), (403, "protected".into()));
    assert_eq!(s.place(&eve, 7, 3, 2).status, 200, "outside the rectangle");
    assert_eq!(s.place(&token("mod-mia"), 5, 3, 4).status, 200, "a holder places inside");
    let info = s.http("GET", "/api/v1/canvas/info", &[], b"").json();
    assert_eq!(info["protected"], serde_json::json!([{"x": 4, "y": 2, "w": 3, "h": 2}]));
    for body in [r#"{"x":15,"y":0,"w":2,"h":1}"#, r#"{"x":0,"y":0,"w":0,"h":1}"#] {
        let r = as_holder(&s, &mod_token, "protect", body);
        assert_eq!((r.status, r.error_code().as_str()), (400, "bad_rect"), "{body}");
    }
    assert_eq!(as_holder(&s, &mod_token, "unprotect", r#"{"x":0,"y":0,"w":16,"h":8}"#).status, 200);
    assert_eq!(s.place(&eve, 5, 3, 2).status, 200);
    assert_eq!(as_holder(&s, &op_token, "pause", "").status, 200);

    // The audit list names who did what.
    let auth = format!("Bearer {mod_token}");
    let a = s.http("GET", "/api/v1/admin/audit", &[("Authorization", &auth)], b"").json();
    let by: Vec<(&str, &str)> = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        by,
        [
            ("pause", "op-oli"),
            ("unprotect", "mod-mia"),
            ("protect", "mod-mia"),
            ("unban", "op-oli"),
            ("ban", "mod-mia")
        ]
    );
    assert_eq!(a["entries"][2]["rect"], serde_json::json!({"x": 4, "y": 2, "w": 3, "h": 2}));

    // A roles file with a mistake: the server refuses to start, naming it.
    std::fs::write(&roles, format!("{mod_entry}\n{mod_entry}")).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["check-config", "--data-dir", data.to_str().unwrap(), "--roles", roles_flag])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listed twice")
            || String::from_utf8_lossy(&out.stderr).contains("listed twice")
    );
}

#[test]
fn the_final_canvas_is_the_last_changed_version_and_its_hash_once_the_end_has_passed() {
    let s = Server::start(&flags());
    let r = s.http("GET", "/api/v1/canvas/final", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_ended"), "no end set");
    let alice = token("alice");
    assert_eq!(s.place(&alice, 1, 1, 3).status, 200);
    let last = s.place(&alice, 2, 1, 4).json()["version"].as_u64().unwrap();
    // An end set in the future: not final yet.
    control(&s, "end", &format!(r#"{{"at_ms":{}}}"#, placecast::now_ms() + 3_600_000));
    assert_eq!(s.http("GET", "/api/v1/canvas/final", &[], b"").error_code(), "not_ended");
    // An end already past (by more than the clock slack): final, at the last version that
    // changed a pixel, not the control entries after it.
    control(&s, "end", &format!(r#"{{"at_ms":{}}}"#, placecast::now_ms() - 10_000));
    assert_eq!(refused(&s.place(&alice, 3, 1, 5)), (410, "ended".into()));
    let f = s.http("GET", "/api/v1/canvas/final", &[], b"");
    assert_eq!(f.status, 200, "{}", String::from_utf8_lossy(&f.body));
    let f = f.json();
    assert_eq!(f["version"].as_u64(), Some(last));
    let canvas = s.http("GET", &format!("/api/v1/canvas?at={last}"), &[], b"");
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(&canvas.body).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(f["sha256"].as_str(), Some(want.as_str()));
    assert_eq!(placecast::protocol::parse_snapshot(&canvas.body).unwrap().pixels[16 + 2], 4);
}

fn pixels_at(s: &Server, v: u64) -> Vec<u8> {
    let r = s.http("GET", &format!("/api/v1/canvas?at={v}"), &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    placecast::protocol::parse_snapshot(&r.body).unwrap().pixels
}

fn region(s: &Server, action: &str, body: &str) -> serde_json::Value {
    let r = admin(s, action, body);
    assert_eq!(r.status, 200, "{action}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[test]
fn fill_restore_and_a_ban_with_revert_are_ordinary_edits_after_their_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = Server::start_in(tmp.path(), port, &flags());
    const W: usize = 16;
    let (alice, eve, bob) = (token("alice"), token("eve"), token("bob"));
    // Alice draws a 4x2 block; V is the canvas then.
    let mut v = 0;
    for (i, (x, y)) in [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (3, 1)].into_iter().enumerate() {
        let r = s.place(&alice, x, y, 2 + i as u8);
        assert_eq!(r.status, 200);
        v = r.json()["version"].as_u64().unwrap();
    }
    wait_for(10, "the history to reach V", || {
        (s.http("GET", &format!("/api/v1/canvas?at={v}"), &[], b"").status == 200).then_some(())
    });
    let at_v = pixels_at(&s, v);
    // A client following the stream from here on.
    let mut ws = s.ws(&format!("?since={v}"));
    let mut follower = at_v.clone();
    // Eve vandalises it, and paints elsewhere; Bob paints over one of Eve's pixels.
    let before_eve = placecast::now_ms();
    wait_for(5, "a new millisecond", || (placecast::now_ms() > before_eve).then_some(()));
    for x in 0..4 {
        assert_eq!(s.place(&eve, x, 0, 15).status, 200);
    }
    assert_eq!(s.place(&eve, 9, 5, 15).status, 200);
    assert_eq!(s.place(&eve, 10, 5, 15).status, 200);
    assert_eq!(s.place(&bob, 10, 5, 4).status, 200);

    // Restore the block to V: equal to the canvas at V inside it, nothing else touched.
    let r = region(&s, "restore", &format!(r#"{{"x":0,"y":0,"w":4,"h":2,"version":{v}}}"#));
    assert_eq!(r["pixels"], 4, "only the pixels that differ are logged");
    let now = s.snapshot().pixels;
    for y in 0..2 {
        for x in 0..4 {
            assert_eq!(now[y * W + x], at_v[y * W + x], "({x},{y}) is back");
        }
    }
    assert_eq!((now[5 * W + 9], now[5 * W + 10]), (15, 4), "outside the rectangle unchanged");
    // The restored pixel's last edit is the operator's (who did it), at the restore's versions.
    let p = s.http("GET", "/api/v1/pixel?x=0&y=0", &[], b"").json();
    assert_eq!(p["last"]["user"], "operator");

    // A fill goes through a pause and a protection (a moderator's work), and is a batch too.
    control(&s, "protect", r#"{"x":8,"y":0,"w":8,"h":8}"#);
    control(&s, "pause", "");
    assert_eq!(region(&s, "fill", r#"{"x":12,"y":6,"w":4,"h":2,"color":9}"#)["pixels"], 8);
    control(&s, "resume", "");
    control(&s, "unprotect", r#"{"x":0,"y":0,"w":16,"h":8}"#);
    assert!((12..16).all(|x| s.snapshot().pixels[6 * W + x] == 9));

    // Ban Eve and revert what she placed since before her first edit: her pixel at (9,5) goes
    // back to white; (10,5), which Bob painted over, stays Bob's.
    let r = region(&s, "ban", &format!(r#"{{"user":"eve","revert_since_ms":{before_eve}}}"#));
    assert_eq!(r["pixels"], 1, "{r}");
    let now = s.snapshot();
    assert_eq!((now.pixels[5 * W + 9], now.pixels[5 * W + 10]), (0, 4));
    assert_eq!(refused(&s.place(&eve, 1, 1, 1)), (403, "banned".into()));

    // The follower saw all of it as ordinary batches and has the same canvas.
    ws.follow_until(v, now.version, &mut follower);
    assert_eq!(follower, now.pixels, "a client following the stream has the same canvas");

    // Bad requests write nothing.
    let before = head(&s);
    for (action, body, status, code) in [
        ("restore", format!(r#"{{"x":0,"y":0,"w":4,"h":2,"version":{}}}"#, before + 10), 404, "version_not_yet"),
        ("restore", r#"{"x":14,"y":0,"w":4,"h":2,"version":1}"#.to_string(), 400, "bad_rect"),
        ("fill", r#"{"x":0,"y":0,"w":1,"h":1,"color":16}"#.to_string(), 400, "bad_color"),
        ("fill", r#"{"x":0,"y":0,"w":1,"h":1}"#.to_string(), 400, "bad_json"),
        ("ban", format!(r#"{{"user":"bob","revert_since_ms":{}}}"#, placecast::now_ms() + 60_000), 400, "bad_body"),
    ] {
        let r = admin(&s, action, &body);
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{action} {body}");
    }
    assert_eq!(head(&s), before);

    // Durable: a SIGKILL and restart serve the same canvas.
    s.kill9();
    let s = Server::start_in(tmp.path(), port, &flags());
    assert_eq!(s.snapshot().pixels, now.pixels);
    let a = audit(&s);
    let actions: Vec<&str> = a["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(&actions[..2], ["ban", "unprotect"]);
    assert_eq!(a["entries"][0]["revert_since_ms"].as_u64(), Some(before_eve / 1000 * 1000));
    assert!(a["entries"].as_array().unwrap().iter().any(|e| e["action"] == "restore" && e["to_version"] == v));
}

#[test]
fn claims_in_user_tokens_set_their_cooldown() {
    let s = Server::start(&["--cooldown", "3600", "--claim-cooldown", "verified=60", "--claim-cooldown", "age90=600"]);
    // A token with claims, minted by the CLI as a sign-in service would.
    let out = std::process::Command::new(common::bin())
        .args(["mint-token", "alice", "--claim", "verified", "--secret", TEST_SECRET])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alice = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(alice.starts_with("alice.0.verified."), "{alice}");
    let signer = placecast::token::Signer::new(TEST_SECRET.as_bytes());
    let carol = signer.mint_with_claims("carol", 0, &["age90".into(), "verified".into()]).unwrap();
    let dave = signer.mint_with_claims("dave", 0, &["age90".into()]).unwrap();
    let bob = token("bob");
    for (tok, want_ms) in [(&alice, 60_000u64), (&carol, 60_000), (&dave, 600_000), (&bob, 3_600_000)] {
        let r = s.place(tok, 1, 1, 1);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["cooldown_ms"].as_u64(), Some(want_ms), "the first listed claim decides");
        let again = s.place(tok, 1, 1, 1);
        assert_eq!(again.error_code(), "cooldown");
        let retry = again.json()["retry_after_ms"].as_u64().unwrap();
        assert!(retry <= want_ms && retry > want_ms - 10_000, "{retry} of {want_ms}");
    }
    // Over the WebSocket the class comes from the token the socket authenticated with.
    let erin = signer.mint_with_claims("erin", 0, &["verified".into()]).unwrap();
    let mut ws = s.ws(&format!("?token={erin}"));
    ws.send_text(r#"{"type":"place","x":2,"y":2,"color":1}"#);
    ws.next_text("placed");
    ws.send_text(r#"{"type":"place","x":2,"y":2,"color":1}"#);
    let e = ws.next_text("error");
    assert_eq!(e["code"], "cooldown");
    assert!(e["retry_after_ms"].as_u64().unwrap() <= 60_000, "{e}");
    // A tampered claim list is refused.
    let forged = alice.replacen("verified", "age90", 1);
    assert_eq!(s.place(&forged, 3, 3, 1).error_code(), "bad_token");
}

/// Every message of an `/api/v1/edits` body applied to `model` from `at`; the resizes seen.
fn apply_edits_body(body: &[u8], mut at: u64, model: &mut Model) -> (u64, Vec<u64>) {
    use placecast::protocol::StreamMessage;
    let (mut i, mut resizes) = (0, Vec::new());
    while i < body.len() {
        let (m, len) = StreamMessage::parse_prefix(&body[i..]).expect("a message");
        assert_eq!(m.span().0, at, "contiguous");
        let next = m.span().1;
        match m {
            StreamMessage::Batch(b) => b.iter().for_each(|(p, c)| model.pixels[p as usize] = c),
            StreamMessage::Resize(r) => {
                model.grow(r.width, r.height);
                resizes.push(r.to);
            }
        }
        at = next;
        i += len;
    }
    (at, resizes)
}

#[test]
fn the_canvas_grows_while_live_and_every_client_follows_without_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = Server::start_in(tmp.path(), port, &flags());
    let alice = token("alice");
    for x in 0..4 {
        assert_eq!(s.place(&alice, x, 7, 1 + x as u8).status, 200);
    }
    let first = s.snapshot();
    assert_eq!((first.width, first.height), (16, 8));
    // Live clients on both shards, and one that leaves before the resize and comes back after.
    let (mut a, mut b) = common::one_per_shard(&s, &format!("?since={}", first.version));
    let (mut ma, mut mb) = (Model::of(&first), Model::of(&first));
    let away = first.version;

    // Bad resizes write nothing.
    let before = head(&s);
    for (body, status, code) in [
        (r#"{"width":15,"height":9}"#, 400, "cannot_shrink"),
        (r#"{"width":16,"height":8}"#, 400, "no_change"),
        (r#"{"width":5000,"height":5000}"#, 413, "canvas_too_large"),
        (r#"{"width":70000,"height":8}"#, 413, "canvas_too_large"),
        (r#"{"width":20}"#, 400, "bad_json"),
    ] {
        let r = admin(&s, "resize", body);
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{body}");
    }
    assert_eq!(head(&s), before);
    assert_eq!(refused(&s.place(&alice, 20, 10, 5)), (400, "bad_coordinates".into()), "not yet");

    let grown = control(&s, "resize", r#"{"width":24,"height":12}"#);
    let info = s.http("GET", "/api/v1/canvas/info", &[], b"").json();
    assert_eq!((info["width"].as_u64(), info["height"].as_u64()), (Some(24), Some(12)));
    // The new area takes placements; the old pixels keep their (x, y).
    assert_eq!(s.place(&alice, 20, 10, 5).status, 200);
    assert_eq!(s.place(&alice, 23, 0, 6).status, 200);
    let last = s.place(&alice, 2, 7, 9).json()["version"].as_u64().unwrap();
    assert_eq!(refused(&s.place(&alice, 24, 0, 1)), (400, "bad_coordinates".into()));

    // Both live clients got the resize in the stream, in order, and follow on at the new width:
    // their canvases equal the snapshot, without a reload.
    let snap = wait_for(30, "a snapshot at the last placement", || {
        let sn = s.snapshot();
        (sn.version >= last).then_some(sn)
    });
    assert_eq!((snap.width, snap.height), (24, 12));
    for (ws, m) in [(&mut a, &mut ma), (&mut b, &mut mb)] {
        let (_, resizes) = ws.follow_model(first.version, snap.version, m);
        assert_eq!(resizes, vec![grown]);
        assert_eq!(*m, Model::of(&snap));
    }
    assert_eq!((ma.at(20, 10), ma.at(23, 0), ma.at(2, 7), ma.at(3, 7), ma.at(17, 3)), (5, 6, 9, 4, 0));

    // A client back from before the resize catches up across it, in the same messages.
    let mut back = s.ws(&format!("?since={away}"));
    let mut mback = Model::of(&first);
    let (_, resizes) = back.follow_model(away, snap.version, &mut mback);
    assert_eq!((resizes, &mback), (vec![grown], &Model::of(&snap)));

    // The past keeps its size: the canvas just before the resize is 16x8, at it 24x12.
    let at = |v: u64| {
        let r = s.http("GET", &format!("/api/v1/canvas?at={v}"), &[], b"");
        placecast::protocol::parse_snapshot(&r.body).unwrap()
    };
    let (pre, post) = (at(grown - 1), at(grown));
    assert_eq!((pre.width, pre.height, post.width, post.height), (16, 8, 24, 12));
    assert_eq!(pre.pixels, first.pixels);
    // The edits chunk holds the resize between two batches; applied, it is the snapshot.
    let chunk = s.http("GET", "/api/v1/edits?from=0", &[], b"");
    let mut model = Model { width: 16, height: 8, pixels: vec![0; 128] };
    let (to, resizes) = apply_edits_body(&chunk.body, 0, &mut model);
    assert_eq!((resizes, to >= snap.version), (vec![grown], true));
    assert_eq!(model.pixels, at(to).pixels);
    // Who placed a pixel of the new area.
    let p = s.http("GET", "/api/v1/pixel?x=20&y=10", &[], b"").json();
    assert_eq!(p["last"]["user"], "alice", "{p}");
    // A restore to before the resize clears the new area to the empty canvas.
    region(&s, "restore", &format!(r#"{{"x":16,"y":0,"w":8,"h":12,"version":{}}}"#, grown - 1));
    let restored = wait_for(30, "the restore in the snapshot", || {
        let sn = s.snapshot();
        (sn.pixels[10 * 24 + 20] == 0 && sn.pixels[23] == 0).then_some(sn)
    });
    assert_eq!(restored.pixels[7 * 24 + 2], 9, "outside the rectangle: kept");
    let audit = audit(&s);
    let e = &audit["entries"][1];
    assert_eq!(
        (e["action"].as_str(), e["width"].as_u64(), e["version"].as_u64()),
        (Some("resize"), Some(24), Some(grown))
    );

    // A timelapse films the canvas at the size the log grew it to.
    let film = tmp.path().join("grown.apng");
    let out = std::process::Command::new(common::bin())
        .args(["timelapse", "--data-dir", tmp.path().to_str().unwrap(), "--width", "16", "--height", "8"])
        .args(["--duration", "1", "--fps", "4", "--pace", "edits", "--out", film.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("4 frames of 24x12"), "{said}");

    // After a SIGKILL the node replays the resize: the same canvas, and a client from before the
    // resize catches up across it again.
    s.kill9();
    let s = Server::start_in(tmp.path(), port, &flags());
    let again = s.snapshot();
    assert_eq!((again.width, again.height, &again.pixels), (24, 12, &restored.pixels));
    let mut late = s.ws(&format!("?since={away}"));
    let mut mlate = Model::of(&first);
    let (_, resizes) = late.follow_model(away, again.version, &mut mlate);
    assert_eq!((resizes, mlate), (vec![grown], Model::of(&again)));
}
