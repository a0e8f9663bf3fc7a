//! A quiet exit when standard output is a pipe that was closed.
//!
//! Rust starts programs with SIGPIPE ignored, so a write to a closed pipe
//! returns an error and `println!` panics on it:
//! `lintrace-train sweep FILE --dry-run | head` ended in a panic message
//! once `head` had read its lines. Command-line tools end quietly there
//! instead, which the default action of SIGPIPE does.

/// Restores SIGPIPE's default action (end the process). Call first in `main`.
pub fn exit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn signal(signum: c_int, handler: usize) -> usize;
        }
        // Both values are the same on Linux and the BSDs (macOS included).
        const SIGPIPE: c_int = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: signal(2) with SIG_DFL installs no handler of ours; it only
        // resets the disposition the Rust runtime set at startup.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
