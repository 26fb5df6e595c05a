//! Entering a network namespace from a thread (the one `unsafe` of the
//! test library).

use std::fs::File;
use std::os::fd::AsRawFd;

/// Moves the calling thread into network namespace `name` (created with
/// `ip netns add`). Only this thread changes namespace; use a dedicated
/// thread.
pub fn enter(name: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns takes a valid open fd (kept open by `f` for the call)
    // and a namespace type; it changes only the calling thread's namespace.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
