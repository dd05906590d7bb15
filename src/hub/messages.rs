//! The WebSocket message layer of the hub: client frames (control frames, fragments, text)
//! turned into actions (place, auth), and the answers. The pure parts, `assemble` and
//! `parse_client_message`, are tested here without sockets; the `Hub` methods apply them.
//!
//! Invariants: a client message is at most `MAX_CLIENT_MESSAGE` bytes however it is
//! fragmented (1009 beyond); binary messages are refused (1003), invalid UTF-8 is 1007,
//! invalid close frames 1002; a connection has at most `MAX_QUEUED` unanswered frames and
//! `MAX_IN_FLIGHT` placements (never an unbounded queue per client).

use super::{Hub, PlaceJob, State, MAX_IN_FLIGHT, MAX_QUEUED};
use crate::messages::ConnId;
use crate::place::{self, PlaceBody, PlaceError};
use crate::protocol::{close, pong_frame, text_frame, MAX_CLIENT_MESSAGE};
use crate::ws::{self, reason, CloseReason, Kind};
use bytes::Bytes;
use std::borrow::Cow;

/// What a client's complete text message asks for.
#[derive(Debug, PartialEq)]
pub enum ClientMessage {
    Place {
        id: Option<serde_json::Number>,
        body: PlaceBody,
    },
    Auth {
        id: Option<serde_json::Number>,
        token: String,
    },
    /// A message the server answers with an error and otherwise ignores.
    Refused {
        id: Option<serde_json::Number>,
        error: Refusal,
    },
}

#[derive(Debug, PartialEq)]
pub enum Refusal {
    Place(PlaceError),
    UnknownType(String),
}

/// Parses one complete text message. Only a message that is not UTF-8 ends the connection.
pub fn parse_client_message(payload: &[u8]) -> Result<ClientMessage, CloseReason> {
    let text = std::str::from_utf8(payload).map_err(|_| reason(close::BAD_DATA, "text message is not UTF-8"))?;
    let msg: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Ok(ClientMessage::Refused { id: None, error: Refusal::Place(PlaceError::BadJson(e.to_string())) })
        }
    };
    let id = msg.get("id").and_then(|v| v.as_number()).cloned();
    let refuse = |id, e| Ok(ClientMessage::Refused { id, error: Refusal::Place(e) });
    match msg.get("type").and_then(|t| t.as_str()) {
        Some("place") => match serde_json::from_value::<PlaceBody>(msg) {
            Ok(body) => Ok(ClientMessage::Place { id, body }),
            Err(e) => refuse(id, PlaceError::BadBody(e.to_string())),
        },
        Some("auth") => match msg.get("token").and_then(|t| t.as_str()) {
            Some(t) => Ok(ClientMessage::Auth { id, token: t.to_string() }),
            None => refuse(id, PlaceError::MissingToken),
        },
        other => {
            let text = format!("unknown message type {:?}; expected \"place\" or \"auth\"", other.unwrap_or("(none)"));
            Ok(ClientMessage::Refused { id, error: Refusal::UnknownType(text) })
        }
    }
}

/// One data frame into the message being assembled: `None` until the message is whole.
pub fn assemble<'a>(
    fragments: &mut Vec<u8>,
    in_message: &mut bool,
    kind: Kind,
    fin: bool,
    payload: &'a [u8],
) -> Result<Option<Cow<'a, [u8]>>, CloseReason> {
    match (kind, *in_message) {
        (Kind::Text, true) => return Err(reason(close::PROTOCOL_ERROR, "new message before the previous one ended")),
        (Kind::Continuation, false) => return Err(reason(close::PROTOCOL_ERROR, "continuation without a message")),
        _ => {}
    }
    if fin && !*in_message {
        return Ok(Some(Cow::Borrowed(payload)));
    }
    if fragments.len() + payload.len() > MAX_CLIENT_MESSAGE {
        return Err(reason(close::TOO_BIG, "message over 4096 bytes"));
    }
    fragments.extend_from_slice(payload);
    *in_message = !fin;
    Ok(fin.then(|| Cow::Owned(std::mem::take(fragments))))
}

impl Hub {
    /// Parses client frames from `data` (plus any carry-over) and acts on them.
    pub(super) fn ingest(&mut self, slot: usize, data: &mut [u8]) {
        let id = self.id(slot);
        let carry = self.conns[slot].extra.as_mut().map(|e| std::mem::take(&mut e.carry)).filter(|c| !c.is_empty());
        let mut owned;
        let buf: &mut [u8] = match carry {
            Some(mut c) => {
                c.extend_from_slice(data);
                owned = c;
                &mut owned
            }
            None => data,
        };
        let mut pos = 0;
        while pos < buf.len() {
            match ws::next_frame(&mut buf[pos..]) {
                Ok(Some(f)) => {
                    let payload = (pos + f.payload.start)..(pos + f.payload.end);
                    pos += f.len;
                    if let Err(r) = self.on_frame(slot, f.kind, f.fin, &buf[payload]) {
                        self.close_with(slot, r);
                        return;
                    }
                    if self.get(id).is_none() || self.conns[slot].state == State::Closing {
                        return;
                    }
                }
                Ok(None) => break,
                Err(r) => {
                    self.close_with(slot, r);
                    return;
                }
            }
        }
        if pos < buf.len() {
            let rest = buf[pos..].to_vec();
            self.conns[slot].extra().carry = rest;
        }
    }

    pub(super) fn on_frame(&mut self, slot: usize, kind: Kind, fin: bool, payload: &[u8]) -> Result<(), CloseReason> {
        match kind {
            Kind::Ping => self.enqueue(slot, pong_frame(payload)),
            Kind::Pong => Ok(()),
            Kind::Close if !ws::valid_close(payload) => {
                Err(reason(close::PROTOCOL_ERROR, "invalid close frame: bad code or reason"))
            }
            Kind::Close => {
                tracing::trace!(code = ws::close_code(payload), "client closed");
                self.close_frame_then(slot, close::NORMAL, "bye");
                Ok(())
            }
            Kind::Binary => Err(reason(close::UNSUPPORTED, "binary messages are not accepted; send JSON text")),
            Kind::Text | Kind::Continuation => self.on_data(slot, kind, fin, payload),
        }
    }

    pub(super) fn on_data(&mut self, slot: usize, kind: Kind, fin: bool, payload: &[u8]) -> Result<(), CloseReason> {
        let in_message = self.conns[slot].extra.as_ref().is_some_and(|e| e.in_message);
        if fin && !in_message && kind == Kind::Text {
            // The common case, a whole message in one frame: no per-connection state touched.
            return self.on_text(slot, payload);
        }
        let e = self.conns[slot].extra();
        let (mut fragments, mut open) = (std::mem::take(&mut e.fragments), e.in_message);
        let whole = assemble(&mut fragments, &mut open, kind, fin, payload).map(|m| m.map(Cow::into_owned));
        let e = self.conns[slot].extra();
        e.fragments = fragments;
        e.in_message = open;
        match whole? {
            Some(msg) => self.on_text(slot, &msg),
            None => Ok(()),
        }
    }

    pub(super) fn on_text(&mut self, slot: usize, payload: &[u8]) -> Result<(), CloseReason> {
        match parse_client_message(payload)? {
            ClientMessage::Place { id, body } => self.on_place(slot, id, body),
            ClientMessage::Auth { id, token } => self.on_auth(slot, id, &token),
            ClientMessage::Refused { id, error: Refusal::Place(e) } => self.reply_error(slot, id, &e),
            ClientMessage::Refused { id, error: Refusal::UnknownType(text) } => {
                self.enqueue(slot, error_frame(id.as_ref(), "unknown_type", &text, None))
            }
        }
    }

    pub(super) fn on_auth(
        &mut self,
        slot: usize,
        id: Option<serde_json::Number>,
        token: &str,
    ) -> Result<(), CloseReason> {
        match self.shared.verify_user(token) {
            Ok(user) => {
                self.conns[slot].user = user.id;
                self.meta[slot].expires_s = super::expires_u32(user.expires);
                let mut m = serde_json::json!({"type": "authed", "user": user.name});
                if let Some(id) = id {
                    m["id"] = id.into();
                }
                self.enqueue(slot, text_frame(&m.to_string()))
            }
            Err(e) => self.reply_error(slot, id, &PlaceError::Token(e)),
        }
    }

    pub(super) fn on_place(
        &mut self,
        slot: usize,
        id: Option<serde_json::Number>,
        body: PlaceBody,
    ) -> Result<(), CloseReason> {
        if self.conns[slot].in_flight >= MAX_IN_FLIGHT {
            return self.reply_error(slot, id, &PlaceError::TooManyInFlight);
        }
        let meta = self.meta[slot];
        if self.conns[slot].user != 0 && meta.expires_s != 0 && crate::now_ms() / 1000 >= meta.expires_s as u64 {
            // Checked for the token's whole life, not only at the handshake.
            self.conns[slot].user = 0;
            return self.reply_error(slot, id, &PlaceError::Token(crate::token::TokenError::Expired));
        }
        let user = Some(self.conns[slot].user).filter(|&u| u != 0);
        match place::begin(&self.shared, self.shard, user, meta.addr, &body) {
            Ok(pending) => {
                self.conns[slot].in_flight += 1;
                let conn = self.id(slot);
                self.jobs.push(PlaceJob { conn, id, pending });
                Ok(())
            }
            Err(e) => self.reply_error(slot, id, &e),
        }
    }

    /// Delivers a placement's answer, if the connection is still there.
    pub fn place_done(
        &mut self,
        conn: ConnId,
        id: Option<serde_json::Number>,
        result: Result<place::Placed, PlaceError>,
    ) {
        let Some(slot) = self.get(conn) else { return };
        self.conns[slot].in_flight = self.conns[slot].in_flight.saturating_sub(1);
        let frame = match result {
            Ok(p) => {
                let mut m = serde_json::json!({"type": "placed", "version": p.version, "next_at_ms": p.next_at_ms});
                if let Some(id) = id {
                    m["id"] = id.into();
                }
                text_frame(&m.to_string())
            }
            Err(e) => error_frame(id.as_ref(), e.code(), &e.to_string(), e.retry_after_ms()),
        };
        if let Err(r) = self.enqueue(slot, frame) {
            self.close_with(slot, r);
        }
    }

    pub(super) fn reply_error(
        &mut self,
        slot: usize,
        id: Option<serde_json::Number>,
        e: &PlaceError,
    ) -> Result<(), CloseReason> {
        self.enqueue(slot, error_frame(id.as_ref(), e.code(), &e.to_string(), e.retry_after_ms()))
    }

    pub(super) fn enqueue(&mut self, slot: usize, frame: Bytes) -> Result<(), CloseReason> {
        let c = &mut self.conns[slot];
        if c.state == State::Closing {
            return Ok(());
        }
        let e = c.extra();
        if e.queue.len() >= MAX_QUEUED {
            return Err(reason(close::POLICY, "too many unanswered messages: read the answers"));
        }
        e.queue.push_back(frame);
        self.pump(slot);
        Ok(())
    }
}

pub(super) fn error_frame(
    id: Option<&serde_json::Number>,
    code: &str,
    message: &str,
    retry_after_ms: Option<u64>,
) -> Bytes {
    let mut m = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(id) = id {
        m["id"] = id.clone().into();
    }
    if let Some(r) = retry_after_ms {
        m["retry_after_ms"] = r.into();
    }
    text_frame(&m.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn messages_parse_into_actions_or_refusals() {
        let place = parse_client_message(br#"{"type":"place","x":1,"y":2,"color":3,"id":7}"#).unwrap();
        let ClientMessage::Place { id, body } = place else { panic!("{place:?}") };
        assert_eq!((id.and_then(|n| n.as_u64()), body.x, body.y, body.color), (Some(7), 1, 2, 3));
        let auth = parse_client_message(br#"{"type":"auth","token":"t"}"#).unwrap();
        assert_eq!(auth, ClientMessage::Auth { id: None, token: "t".into() });
        let code = |m: &[u8]| match parse_client_message(m).unwrap() {
            ClientMessage::Refused { error: Refusal::Place(e), .. } => e.code().to_string(),
            ClientMessage::Refused { error: Refusal::UnknownType(_), .. } => "unknown_type".into(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code(b"{nope"), "bad_json");
        assert_eq!(code(br#"{"type":"place","x":"a"}"#), "bad_body");
        assert_eq!(code(br#"{"type":"auth"}"#), "missing_token");
        assert_eq!(code(br#"{"type":"dance"}"#), "unknown_type");
        assert_eq!(code(b"[]"), "unknown_type");
        assert_eq!(parse_client_message(&[0xff, 0xfe]).unwrap_err().code, close::BAD_DATA);
    }

    #[test]
    pub(super) fn fragments_assemble_within_the_bound() {
        let (mut frags, mut open) = (Vec::new(), false);
        let whole = assemble(&mut frags, &mut open, Kind::Text, true, b"abc").unwrap();
        assert!(matches!(whole, Some(Cow::Borrowed(b"abc"))), "an unfragmented message is not copied");
        assert_eq!(assemble(&mut frags, &mut open, Kind::Text, false, b"ab").unwrap(), None);
        assert_eq!(assemble(&mut frags, &mut open, Kind::Text, true, b"x").unwrap_err().code, close::PROTOCOL_ERROR);
        assert_eq!(
            assemble(&mut frags, &mut open, Kind::Continuation, true, b"cd").unwrap().as_deref(),
            Some(&b"abcd"[..])
        );
        assert!(!open && frags.is_empty());
        assert_eq!(
            assemble(&mut frags, &mut open, Kind::Continuation, true, b"x").unwrap_err().code,
            close::PROTOCOL_ERROR
        );
        let big = vec![b'a'; 3000];
        assert_eq!(assemble(&mut frags, &mut open, Kind::Text, false, &big).unwrap(), None);
        assert_eq!(assemble(&mut frags, &mut open, Kind::Continuation, false, &big).unwrap_err().code, close::TOO_BIG);
    }
}
