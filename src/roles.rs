//! Who may run the event: named moderator and operator tokens (`--roles FILE`), and the
//! `--admin-token` operator.
//!
//! The file holds, per person, a name, a role and the SHA-256 of their token, never the token
//! itself (so the file is not a secret and can live in configuration management):
//!
//! ```toml
//! [[holder]]
//! name = "mod-alice"        # 1-64 of [A-Za-z0-9_-]; also their user name on the canvas
//! role = "moderator"        # or "operator"
//! sha256 = "9f86d0...0a08"  # 64 hex digits: `printf %s "$TOKEN" | sha256sum`
//! ```
//!
//! `placecast role-token NAME --role moderator` prints a fresh token and its entry.
//!
//! Roles: a moderator bans and unbans, protects and unprotects, and reads the audit list; an
//! operator does all that and changes the switches (cooldown, pause, resume, end), the limits
//! and the drain. Each holder has an actor id (`actor_id`: 32 bits of their name's user key,
//! never 0), written into every control entry they make (`Edit::aux`), so the audit list says
//! who; 0 is the `--admin-token` operator. A user token whose name is a holder's may place in
//! protected rectangles (the node marks the edit, `control::EDIT_BY_MODERATOR`).
//!
//! Invariants: a token is checked by hashing it and looking the hash up, then comparing the
//! 32-byte hashes in constant time, so timing says nothing about any token; the file is checked
//! whole at start (names, roles, hashes, actor ids unique, at most `MAX_HOLDERS`), or the server
//! refuses to start with the line at fault.

pub use crate::bounds::MAX_HOLDERS;
use crate::token::user_key;
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use std::path::Path;
use thiserror::Error;

/// The `--admin-token` operator's actor id and name.
pub const ADMIN_ACTOR: u32 = 0;
pub const ADMIN_NAME: &str = "operator";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Moderator,
    Operator,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
            Role::Operator => "operator",
        }
    }

    /// Operators may do what moderators may.
    pub fn allows(&self, needed: Role) -> bool {
        *self >= needed
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub role: Role,
    pub actor: u32,
}

#[derive(Debug, Error)]
pub enum RolesError {
    #[error("{path}: {why}")]
    Read { path: String, why: String },
    #[error("{path}: holder {index} ({name:?}): {why}")]
    Holder { path: String, index: usize, name: String, why: String },
    #[error("{path}: more than {MAX_HOLDERS} holders")]
    TooMany { path: String },
}

/// The holders of the roles file, by token hash.
#[derive(Debug, Default)]
pub struct Roles {
    by_hash: FxHashMap<[u8; 32], Holder>,
    by_actor: FxHashMap<u32, String>,
    by_user: FxHashMap<u64, Role>,
    admin_hash: Option<[u8; 32]>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    holder: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    sha256: String,
}

pub fn actor_id(name: &str) -> u32 {
    let k = user_key(name);
    ((k ^ (k >> 32)) as u32).max(1)
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Roles {
    /// The `--admin-token` (if any) and the holders of `file` (if any).
    pub fn load(admin_token: Option<&str>, file: Option<&Path>) -> Result<Roles, RolesError> {
        let mut roles = Roles { admin_hash: admin_token.map(token_hash), ..Default::default() };
        roles.by_actor.insert(ADMIN_ACTOR, ADMIN_NAME.into());
        let Some(path) = file else { return Ok(roles) };
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| RolesError::Read { path: p.clone(), why: e.to_string() })?;
        let parsed: File =
            toml::from_str(&text).map_err(|e| RolesError::Read { path: p.clone(), why: e.to_string() })?;
        if parsed.holder.len() > MAX_HOLDERS {
            return Err(RolesError::TooMany { path: p });
        }
        for (i, e) in parsed.holder.into_iter().enumerate() {
            let bad =
                |why: &str| RolesError::Holder { path: p.clone(), index: i + 1, name: e.name.clone(), why: why.into() };
            if !crate::token::valid_user(&e.name) || e.name == ADMIN_NAME {
                return Err(bad("the name must be 1-64 of [A-Za-z0-9_-], and not \"operator\""));
            }
            let hash = crate::pow::parse_hex::<32>(&e.sha256).ok_or_else(|| bad("sha256 must be 64 hex digits"))?;
            let actor = actor_id(&e.name);
            if roles.by_actor.contains_key(&actor) {
                return Err(bad("the name is listed twice (or its actor id collides with another's: rename one)"));
            }
            if roles.by_hash.contains_key(&hash) || roles.admin_hash == Some(hash) {
                return Err(bad("the token is another holder's (or the --admin-token)"));
            }
            roles.by_actor.insert(actor, e.name.clone());
            roles.by_user.insert(user_key(&e.name), e.role);
            roles.by_hash.insert(hash, Holder { name: e.name, role: e.role, actor });
        }
        Ok(roles)
    }

    /// Whether any token can use the admin API.
    pub fn enabled(&self) -> bool {
        self.admin_hash.is_some() || !self.by_hash.is_empty()
    }

    /// The holder of `token`, if it is the admin token or a holder's.
    pub fn holder(&self, token: &str) -> Option<Holder> {
        let h = token_hash(token);
        if self.admin_hash.is_some_and(|a| crate::admin::same_secret(&a, &h)) {
            return Some(Holder { name: ADMIN_NAME.into(), role: Role::Operator, actor: ADMIN_ACTOR });
        }
        // The lookup is by a hash the caller cannot steer; the compare confirms it in constant
        // time.
        let (stored, holder) = self.by_hash.get_key_value(&h)?;
        crate::admin::same_secret(stored, &h).then(|| holder.clone())
    }

    /// The name of an actor id, for the audit list.
    pub fn actor_name(&self, actor: u32) -> String {
        match self.by_actor.get(&actor) {
            Some(n) => n.clone(),
            None => format!("actor {actor:08x} (not in the roles file)"),
        }
    }

    /// Whether the canvas user `key` is a holder (they may place in protected rectangles).
    pub fn is_holder_user(&self, key: u64) -> bool {
        self.by_user.contains_key(&key)
    }

    pub fn holders(&self) -> usize {
        self.by_hash.len()
    }
}

/// A fresh random token for a holder (`pcr-` and 64 hex digits), and its entry for the roles file.
pub fn new_token(name: &str, role: Role) -> Result<(String, String), String> {
    if !crate::token::valid_user(name) || name == ADMIN_NAME {
        return Err("the name must be 1-64 of [A-Za-z0-9_-], and not \"operator\"".into());
    }
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| e.to_string())?;
    let token = format!("pcr-{}", hex(&b));
    let entry = format!(
        "[[holder]]\nname = \"{name}\"\nrole = \"{}\"\nsha256 = \"{}\"\n",
        role.name(),
        hex(&token_hash(&token))
    );
    Ok((token, entry))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_by_token_roles_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let (mod_token, mod_entry) = new_token("mod-alice", Role::Moderator).unwrap();
        let (op_token, op_entry) = new_token("op-bob", Role::Operator).unwrap();
        let path = dir.path().join("roles.toml");
        std::fs::write(&path, format!("{mod_entry}\n{op_entry}")).unwrap();
        let roles = Roles::load(Some("admin-token-0123456789abcdefghijklmnop"), Some(&path)).unwrap();
        let m = roles.holder(&mod_token).unwrap();
        assert_eq!((m.name.as_str(), m.role), ("mod-alice", Role::Moderator));
        assert_eq!(roles.holder(&op_token).unwrap().role, Role::Operator);
        assert_eq!(roles.holder("admin-token-0123456789abcdefghijklmnop").unwrap().actor, ADMIN_ACTOR);
        assert_eq!(roles.holder("nope"), None);
        assert!(Role::Operator.allows(Role::Moderator) && !Role::Moderator.allows(Role::Operator));
        assert_eq!(roles.actor_name(m.actor), "mod-alice");
        assert!(roles.is_holder_user(user_key("mod-alice")) && !roles.is_holder_user(user_key("eve")));
        assert!(roles.actor_name(12345).contains("not in the roles file"));

        for (bad, why) in [
            (format!("{mod_entry}\n{mod_entry}"), "listed twice"),
            ("[[holder]]\nname = \"x y\"\nrole = \"moderator\"\nsha256 = \"00\"\n".to_string(), "name"),
            (mod_entry.replace("moderator", "admin"), "unknown variant"),
            (mod_entry.replace("sha256 = \"", "sha256 = \"zz"), "sha256"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = Roles::load(None, Some(&path)).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
