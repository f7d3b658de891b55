//! Child processes the lab and the tests start (the daemons, the lab itself): SIGTERM, as `docker stop` and
//! systemd send it, a bounded wait for the exit, and whether it has exited without reaping it. One copy for the
//! harness, the lab and the tests.

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

/// Whether `child` has exited, without reaping it (waitid(2) with `WNOWAIT`): a later `wait` still gets the
/// status, and the caller needs only `&Child`.
pub fn has_exited(child: &Child) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value; waitid writes into it only.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(2) on a pid we spawned and have not reaped, with a valid out pointer.
    let rc = unsafe {
        libc::waitid(libc::P_PID, child.id() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    // SAFETY: si_pid is set by waitid (0 when no child changed state under WNOHANG).
    rc == 0 && unsafe { info.si_pid() } != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// `cat` runs until its stdin closes: not exited while it is open, exited after, and the status is still
    /// there for `wait`.
    #[test]
    fn has_exited_does_not_reap() {
        let mut child = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        assert!(!has_exited(&child));
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !has_exited(&child) {
            assert!(Instant::now() < deadline, "cat did not exit after its stdin closed");
            std::thread::yield_now();
        }
        assert!(has_exited(&child), "still exited: nothing reaped it");
        assert!(child.wait().unwrap().success());
    }
}
