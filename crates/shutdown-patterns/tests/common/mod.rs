//! Shared by the test binaries that signal their own process.

/// Sends `signal` to this very process.
pub fn send_to_self(signal: libc::c_int) {
    // SAFETY: kill(2) with our own pid and a valid signal number has no memory effects.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(libc::getpid(), signal) };
    assert_eq!(rc, 0, "kill(getpid(), {signal}) failed");
}
