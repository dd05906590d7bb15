//! SIGINT/SIGTERM: the first one asks the run to stop early and still report what it measured
//! (every wait loop polls [`interrupted`]); the default action is restored so a second one ends
//! the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // SAFETY: signal() is async-signal-safe; restores the default for a second signal.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// Installs the handlers (idempotent).
pub fn install() {
    // SAFETY: installing a handler that only touches an atomic and calls signal().
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}
