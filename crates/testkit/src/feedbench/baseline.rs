//! The serving baseline as a child process: `bench/feed_baseline.py` (Python's `http.server` over TLS with basic
//! auth, what operators run today to serve a list) serving a copy of the daemon's feed body with the daemon's
//! certificate and credentials.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// How to run the baseline.
#[derive(Debug, Clone)]
pub struct BaselineCommand {
    /// The Python 3 interpreter.
    pub python: PathBuf,
    /// `bench/feed_baseline.py`.
    pub script: PathBuf,
}

impl BaselineCommand {
    /// `python3` and this repository's `bench/feed_baseline.py`.
    pub fn default_in_repo() -> BaselineCommand {
        BaselineCommand {
            python: PathBuf::from("python3"),
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/feed_baseline.py"),
        }
    }

    /// Whether the interpreter runs at all (the smoke test skips the baseline without one).
    pub fn available(&self) -> bool {
        Command::new(&self.python)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// What the baseline serves, and with which certificate and credentials.
pub struct BaselineFiles<'a> {
    /// The file name is the feed's (`<name>.txt`): it is served at `/feeds/<name>.txt`.
    pub file_name: &'a str,
    pub body: &'a [u8],
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    pub user: &'a str,
    pub password: &'a str,
}

/// A running baseline server; killed when dropped.
pub struct Baseline {
    child: Child,
    pub addr: SocketAddr,
}

impl Baseline {
    /// Writes the feed file, certificate and key into `dir`, starts the script on a free loopback port and waits
    /// for its `listening on` line.
    pub fn start(command: &BaselineCommand, dir: &Path, files: &BaselineFiles<'_>) -> Result<Baseline> {
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
            Ok::<_, anyhow::Error>(path)
        };
        let file = write(files.file_name, files.body)?;
        let cert = write("baseline.crt", files.cert_pem.as_bytes())?;
        let key = write("baseline.key", files.key_pem.as_bytes())?;
        let log = std::fs::File::create(dir.join("baseline.log")).context("cannot create baseline.log")?;
        let mut child = Command::new(&command.python)
            .arg(&command.script)
            .args(["--cert".as_ref(), cert.as_os_str(), "--key".as_ref(), key.as_os_str()])
            .args(["--file".as_ref(), file.as_os_str(), "--user".as_ref(), files.user.as_ref()])
            .env("FEED_PASSWORD", files.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {} {}", command.python.display(), command.script.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the baseline's stdout is piped")?;
        let read = BufReader::new(stdout).read_line(&mut line);
        let addr = line.trim().strip_prefix("listening on ").and_then(|a| a.parse::<SocketAddr>().ok());
        match (read, addr) {
            (Ok(_), Some(addr)) => Ok(Baseline { child, addr }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("baseline.log")).unwrap_or_default();
                bail!("the baseline did not start (it printed {line:?}); its stderr:\n{log}")
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
