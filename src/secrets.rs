//! The token secret and the admin token: what is acceptable, and the generated secret file of a
//! single node (`DATA_DIR/secret`).
//!
//! Invariants: placecast never runs with a shipped placeholder or a secret shorter than
//! `MIN_LEN` bytes; the generated file appears whole or not at all (temporary file, fsync,
//! rename, directory fsync; mode 0600); an existing file that is not a valid secret stops the
//! start instead of being replaced, because replacing it would invalidate every token users
//! hold; a cluster node never invents a secret (each node would reject the others' tokens).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// 32 bytes: 256 bits when random, the HMAC-SHA256 key size.
pub const MIN_LEN: usize = 32;
const HOW: &str = "generate one with `openssl rand -hex 32`";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SecretError {
    #[error("{0} is a placeholder from the shipped example files; {HOW}")]
    Placeholder(&'static str),
    #[error("{name} is {len} bytes; it must be at least {MIN_LEN}: {HOW}")]
    Short { name: &'static str, len: usize },
    #[error("a cluster node (--kafka-brokers) needs --secret (PLACECAST_SECRET), the same on every node: a node that invented its own would refuse the others' tokens; {HOW}")]
    ClusterNeedsSecret,
    #[error("{path}: {why}; fix or delete it (deleting it invalidates every token issued with it)")]
    BadFile { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
}

/// Placeholders that the shipped example files contain or that people type.
fn placeholder(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    ["change-me", "change_me", "changeme", "replace-me", "your-secret"].iter().any(|p| v.contains(p))
}

/// Checks a configured secret or admin token.
pub fn check(name: &'static str, value: &str) -> Result<(), SecretError> {
    if placeholder(value) {
        return Err(SecretError::Placeholder(name));
    }
    if value.len() < MIN_LEN {
        return Err(SecretError::Short { name, len: value.len() });
    }
    Ok(())
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join("secret")
}

/// The secret in `DATA_DIR/secret`, created (atomically) when there is none. Returns the secret
/// and whether it was just created.
pub fn load_or_create(dir: &Path) -> Result<(Vec<u8>, bool), SecretError> {
    let path = path_in(dir);
    let io = |why: std::io::Error| SecretError::Io { path: path.clone(), why: why.to_string() };
    match std::fs::read(&path) {
        Ok(bytes) => return parse_file(&path, &bytes).map(|s| (s, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| SecretError::Io { path: path.clone(), why: e.to_string() })?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    write_atomic(&path, format!("{hex}\n").as_bytes()).map_err(io)?;
    Ok((hex.into_bytes(), true))
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, SecretError> {
    let bad = |why: String| SecretError::BadFile { path: path.to_path_buf(), why };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("is not text".into()))?;
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("is empty (a crash while it was written by an old version?)".into()));
    }
    if s.contains(char::is_whitespace) || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must hold one secret on one line".into()));
    }
    check("the secret file", s).map_err(|e| bad(e.to_string()))?;
    Ok(s.as_bytes().to_vec())
}

/// Writes `path` so that it exists whole or not at all, even across a power loss: a private
/// temporary file, fsync, rename over, fsync of the directory (which makes the rename durable).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// "abcd…" with all but the first 4 characters hidden, for printing configuration.
pub fn mask(value: &str) -> String {
    let shown: String = value.chars().take(4).collect();
    format!("{shown}… ({} bytes, masked)", value.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn placeholders_and_short_values_are_refused() {
        assert_eq!(check("--secret", "change-me"), Err(SecretError::Placeholder("--secret")));
        assert_eq!(
            check("--admin-token", "CHANGE_ME-0123456789abcdef0123456789"),
            Err(SecretError::Placeholder("--admin-token"))
        );
        assert_eq!(check("--secret", "short"), Err(SecretError::Short { name: "--secret", len: 5 }));
        assert!(check("--secret", &"a".repeat(32)).is_ok());
    }

    #[test]
    fn created_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(path_in(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert!(!dir.path().join("secret.tmp").exists());
    }

    #[test]
    fn a_malformed_file_stops_the_start_and_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "short\n", "change-me-change-me-change-me-change-me", "two words here and more padding to 32"] {
            std::fs::write(path_in(dir.path()), bad).unwrap();
            let e = load_or_create(dir.path()).unwrap_err();
            assert!(matches!(e, SecretError::BadFile { .. }), "{bad:?}: {e}");
            assert_eq!(std::fs::read_to_string(path_in(dir.path())).unwrap(), bad, "left as it was");
        }
    }
}
