//! Child processes the lab and the tests start (the daemons, the lab itself): SIGTERM, as `docker stop` and
//! systemd send it, and a bounded wait for the exit. One copy for the lab, the e2e harness and its tests.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Sends SIGTERM to `child`. Errors (the process is already gone) are ignored.
pub fn sigterm(child: &Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for, so not reused).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Polls `child` until it exits, at most `timeout`: its status, or `None` if it is still running then.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
