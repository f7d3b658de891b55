//! A private PostgreSQL server for one test ([`PgServer`]): initdb into a temporary directory, `pg_ctl` to start,
//! stop and restart it on a fixed loopback port. It is for the tests that must restart PostgreSQL or lose it, which
//! the machine's shared server (127.0.0.1:5432, used by other tests at the same time) must never be.
//!
//! The binaries come from `$FORTIMISP_PG_BINDIR`, else `pg_config --bindir`, else the highest version under
//! `/usr/lib/postgresql/*/bin`. Without them [`PgServer::start`] prints a loud `SKIP` line and returns `Ok(None)`,
//! unless `FORTIMISP_REQUIRE_POSTGRES=1`, when it is an error.
//!
//! PostgreSQL refuses to run as root. When this process is root, initdb and pg_ctl run as an unprivileged user
//! (`postgres`, else `nobody`): the child drops to that uid/gid (and no supplementary groups) before exec, the
//! server's directory is chowned to it, and the directory handed to `start` gains search permission (`o+x`, not
//! read) so that user can reach it.
//!
//! The server is tuned for throw-away data (`fsync`, `full_page_writes` and `synchronous_commit` off); a
//! [`restart`](PgServer::restart) is a fast shutdown (a checkpoint), so committed data survives it.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set to `1` to fail, rather than skip, when PostgreSQL's binaries are missing (CI sets it).
pub const REQUIRE_POSTGRES: &str = "FORTIMISP_REQUIRE_POSTGRES";
/// A directory holding `initdb`, `pg_ctl` and `postgres`, ahead of `pg_config --bindir` and `/usr/lib/postgresql`.
pub const PG_BINDIR: &str = "FORTIMISP_PG_BINDIR";

/// The users tried, in order, to run PostgreSQL as when this process is root.
const UNPRIVILEGED_USERS: [&str; 2] = ["postgres", "nobody"];
/// How long `pg_ctl` waits for a start or a stop, and how long a started server has to accept a session.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest unix socket path (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why a [`PgServer`] could not be started, stopped or used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The binaries are missing and `FORTIMISP_REQUIRE_POSTGRES=1`.
    #[error("{REQUIRE_POSTGRES}=1 but PostgreSQL cannot run here: {0}")]
    Required(String),
    /// This process is root and no unprivileged user exists to run PostgreSQL as.
    #[error("running as root and none of the users {UNPRIVILEGED_USERS:?} exists; PostgreSQL refuses to run as root")]
    NoUser,
    /// A file-system step (the temporary directory, chown, the configuration file) failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A command (initdb, pg_ctl) exited with a failure; `stderr` is its standard error (and the server log's
    /// tail when the server did not start).
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: ExitStatus, stderr: String },
    /// The server was started but does not accept a session.
    #[error("PostgreSQL at {addr} does not accept sessions: {last}")]
    NotReady { addr: SocketAddr, last: String },
    /// A statement failed.
    #[error("{what} on PostgreSQL at {addr}: {source}")]
    Client {
        what: String,
        addr: SocketAddr,
        #[source]
        source: postgres::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Io { what, source }
}

/// The unprivileged user PostgreSQL runs as when this process is root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A PostgreSQL server of its own for one test, on 127.0.0.1 at a port that stays the same across restarts.
///
/// Methods take `&self` (the server is `Sync`), so an `Arc<PgServer>` can be restarted from
/// `tokio::task::spawn_blocking` while a test's tasks keep writing. Dropping it stops the server (`-m immediate`)
/// and removes its directory.
#[derive(Debug)]
pub struct PgServer {
    bindir: PathBuf,
    base: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    /// Whether the server is up; the lock also keeps a stop and a start from interleaving.
    running: Mutex<bool>,
}

impl PgServer {
    /// Whether PostgreSQL's binaries were found (see the module's documentation for where they are looked for).
    pub fn available() -> bool {
        find_bindir().is_ok()
    }

    /// Creates a data directory in a new temporary directory under `dir` and starts a server on it.
    ///
    /// `Ok(None)`, after a `SKIP` line on stderr, when the binaries are missing and `FORTIMISP_REQUIRE_POSTGRES`
    /// is not `1`. When this process is root, `dir` gains search permission for others (see the module's
    /// documentation).
    pub fn start(dir: &Path) -> Result<Option<PgServer>, PgError> {
        let bindir = match find_bindir() {
            Ok(bindir) => bindir,
            Err(reason) => return skip_or_fail(&reason, required()).map(|()| None),
        };
        let run_as = if is_root() { Some(unprivileged_user().ok_or(PgError::NoUser)?) } else { None };
        let base = tempfile::Builder::new()
            .prefix("pg-")
            .tempdir_in(dir)
            .map_err(io(format!("creating a directory under {}", dir.display())))?;
        if let Some(user) = run_as {
            make_searchable(dir)?;
            std::os::unix::fs::chown(base.path(), Some(user.uid), Some(user.gid))
                .map_err(io(format!("chown {}", base.path().display())))?;
        }
        let data = base.path().join("data");
        let log = base.path().join("server.log");
        let server = PgServer { bindir, data, log, port: 0, run_as, running: Mutex::new(false), base };
        server.initdb()?;
        server.start_on_free_port().map(Some)
    }

    /// A URL for database `db` on this server, as user `postgres` (trust authentication).
    pub fn url(&self, db: &str) -> String {
        loopback_url(self.port, db)
    }

    /// The server's TCP address (127.0.0.1 and its port), for a [`CutProxy`](crate::cut::CutProxy) in front of it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The data directory (its `postgresql.conf`, and the unix socket when the path is short enough for one).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log file (everything the server wrote since initdb).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Creates database `name` (any name: it is quoted). Safe to call from inside a tokio runtime: the
    /// synchronous client runs on a thread of its own.
    pub fn create_database(&self, name: &str) -> Result<(), PgError> {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        self.execute("postgres", &sql).map_err(|e| match e {
            PgError::Client { addr, source, .. } => {
                PgError::Client { what: format!("creating database {name:?}"), addr, source }
            }
            other => other,
        })
    }

    /// Runs `sql` (one or more statements) in database `db` on a session of its own, off any tokio runtime.
    pub fn execute(&self, db: &str, sql: &str) -> Result<(), PgError> {
        let (url, sql, addr) = (self.url(db), sql.to_owned(), self.addr());
        off_runtime(move || {
            let client = |what: &str| {
                let what = what.to_owned();
                move |source| PgError::Client { what, addr, source }
            };
            let mut session = postgres::Client::connect(&url, postgres::NoTls).map_err(client("connecting"))?;
            session.batch_execute(&sql).map_err(client("executing a statement"))
        })
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, a checkpoint is written), waits `down_for`,
    /// and starts it again on the same port; returns once it accepts sessions. Sessions opened before are gone.
    /// Blocking: from async code, call it through `tokio::task::spawn_blocking`.
    pub fn restart(&self, down_for: Duration) -> Result<(), PgError> {
        self.stop()?;
        std::thread::sleep(down_for);
        self.start_again()
    }

    /// Stops the server (`pg_ctl stop -m fast`). A no-op when it is already stopped.
    pub fn stop(&self) -> Result<(), PgError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            self.pg_ctl_stop("fast")?;
            *running = false;
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port and returns once it accepts sessions. A no-op when it is
    /// running.
    pub fn start_again(&self) -> Result<(), PgError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if !*running {
            self.pg_ctl_start()?;
            *running = true;
            self.wait_ready()?;
        }
        Ok(())
    }

    /// Whether the server is up (as far as this handle started and stopped it).
    pub fn is_running(&self) -> bool {
        *self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn initdb(&self) -> Result<(), PgError> {
        let mut initdb = self.command("initdb");
        initdb.arg("-D").arg(&self.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--locale=C",
            "--encoding=UTF8",
            "--no-sync",
        ]);
        run(&mut initdb).map(drop)
    }

    /// The first start: a free port, written to the configuration; another port if that one was taken meanwhile.
    fn start_on_free_port(mut self) -> Result<PgServer, PgError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.port = crate::free_port();
            self.configure()?;
            match self.start_again() {
                Ok(()) => return Ok(self),
                Err(PgError::Command { stderr, .. }) if attempts < 3 && stderr.contains("could not bind") => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Appends this server's settings to `postgresql.conf` (the last setting of a name wins).
    fn configure(&self) -> Result<(), PgError> {
        let socket = self.data.join(format!(".s.PGSQL.{}", self.port));
        // A unix socket in the data directory when its path fits; otherwise TCP only (pg_ctl -w reads the pid file).
        let socket_dir =
            if socket.as_os_str().len() <= MAX_SOCKET_PATH { self.data.to_string_lossy() } else { "".into() };
        let settings = [
            ("listen_addresses", "127.0.0.1".to_owned()),
            ("port", self.port.to_string()),
            ("unix_socket_directories", socket_dir.into_owned()),
            ("fsync", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            ("synchronous_commit", "off".to_owned()),
        ];
        let mut text = String::from("\n# fortimisp-testkit PgServer\n");
        for (name, value) in settings {
            text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        let conf = self.data.join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(io(format!("writing {}", conf.display())))
    }

    fn pg_ctl_start(&self) -> Result<(), PgError> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.data).arg("-l").arg(&self.log).args(["-w", "-t"]);
        pg_ctl.arg(SERVER_TIMEOUT.as_secs().to_string()).arg("start");
        run(&mut pg_ctl).map(drop).map_err(|error| match error {
            PgError::Command { command, status, stderr } => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                PgError::Command { command, status, stderr: format!("{stderr}\nserver log:\n{}", tail.join("\n")) }
            }
            other => other,
        })
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), PgError> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.data).args(["-m", mode, "-w", "-t"]);
        pg_ctl.arg(SERVER_TIMEOUT.as_secs().to_string()).arg("stop");
        run(&mut pg_ctl).map(drop)
    }

    /// Waits until a session opens and answers (pg_ctl -w has seen the server ready; this checks it over TCP).
    fn wait_ready(&self) -> Result<(), PgError> {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            let last = match self.execute("postgres", "SELECT 1") {
                Ok(()) => return Ok(()),
                Err(error) => error.to_string(),
            };
            if Instant::now() > deadline {
                return Err(PgError::NotReady { addr: self.addr(), last });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A command for binary `name`, as the unprivileged user when this process is root, run from the server's
    /// own directory (which that user can read) with no `PG*` variable of the caller's to mislead it.
    fn command(&self, name: &str) -> Command {
        let mut command = Command::new(self.bindir.join(name));
        command.current_dir(self.base.path());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        if let Some(user) = self.run_as {
            // std drops the supplementary groups (setgroups(0)) when root sets a uid.
            command.uid(user.uid).gid(user.gid);
        }
        command
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let running = *self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        if running {
            if let Err(error) = self.pg_ctl_stop("immediate") {
                let _ = writeln!(std::io::stderr(), "PgServer on port {}: not stopped: {error}", self.port);
            }
        }
        // The temporary directory goes with `base`.
    }
}

fn loopback_url(port: u16, db: &str) -> String {
    let db = percent_encoding::utf8_percent_encode(db, percent_encoding::NON_ALPHANUMERIC);
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

/// Runs `command` to completion: its stdout, or its stderr in the error.
fn run(command: &mut Command) -> Result<String, PgError> {
    let shown = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    let output = command.output().map_err(io(format!("running {shown}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        Err(PgError::Command { command: shown, status: output.status, stderr })
    }
}

fn required() -> bool {
    std::env::var(REQUIRE_POSTGRES).is_ok_and(|v| v == "1")
}

/// `Ok` after a `SKIP` line on stderr, or the error when PostgreSQL is required.
fn skip_or_fail(reason: &str, required: bool) -> Result<(), PgError> {
    if required {
        return Err(PgError::Required(reason.to_owned()));
    }
    // Straight to stderr, past the test harness's capture, so the skip shows in every run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: no private PostgreSQL server for this test: {reason}; set {REQUIRE_POSTGRES}=1 to fail instead"
    );
    Ok(())
}

/// Where `initdb`, `pg_ctl` and `postgres` are, or why they were not found.
fn find_bindir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(PG_BINDIR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_binaries(&dir) {
            Ok(dir)
        } else {
            Err(format!("{PG_BINDIR}={} has no initdb, pg_ctl and postgres", dir.display()))
        };
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_binaries(d)) {
        return Ok(dir);
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    highest_version(versions, |v| has_binaries(&Path::new("/usr/lib/postgresql").join(v).join("bin")))
        .map(|v| Path::new("/usr/lib/postgresql").join(v).join("bin"))
        .ok_or_else(|| {
            format!("initdb, pg_ctl and postgres not found ({PG_BINDIR} unset, not in `pg_config --bindir`, not in /usr/lib/postgresql/*/bin)")
        })
}

/// The highest of `versions` (directory names such as `15` or `9.6`, compared numerically) that `usable` accepts.
fn highest_version(versions: Vec<String>, usable: impl Fn(&str) -> bool) -> Option<String> {
    let key = |v: &str| v.split('.').map(|part| part.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    versions.into_iter().filter(|v| v.starts_with(|c: char| c.is_ascii_digit()) && usable(v)).max_by_key(|v| key(v))
}

fn has_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"].iter().all(|name| dir.join(name).is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first of [`UNPRIVILEGED_USERS`] that exists.
fn unprivileged_user() -> Option<RunAs> {
    UNPRIVILEGED_USERS.iter().find_map(|name| lookup_user(name))
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: an all-zero passwd is a valid value; getpwnam_r only writes into it and into `buf`.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: valid NUL-terminated name, out pointers and a buffer of the length passed.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || entry.pw_uid == 0 {
        return None;
    }
    Some(RunAs { uid: entry.pw_uid, gid: entry.pw_gid })
}

/// Adds search permission for others to `dir` when it lacks it, so the unprivileged user can reach the server's
/// directory inside it.
fn make_searchable(dir: &Path) -> Result<(), PgError> {
    let meta = std::fs::metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
    if meta.mode() & 0o001 == 0 {
        let mode = meta.permissions().mode() | 0o001;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod o+x {}", dir.display())))?;
    }
    Ok(())
}

/// Runs `f` on a thread of its own: the synchronous client starts a runtime, which must not be inside the caller's.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(url: &str) -> postgres::Client {
        postgres::Client::connect(url, postgres::NoTls).expect("a session opens")
    }

    #[test]
    fn restart_keeps_the_data_and_ends_the_sessions_opened_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(pg) = PgServer::start(dir.path()).expect("PgServer starts") else { return };
        assert!(pg.is_running());
        assert_ne!(pg.addr().port(), 5432, "never the shared server");
        pg.create_database("kit").expect("database created");

        let mut before = connect(&pg.url("kit"));
        before.batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2), (3)").expect("table written");

        pg.restart(Duration::from_millis(50)).expect("restarts");
        assert!(pg.is_running());
        assert_eq!(pg.addr().port(), pg.port, "same port after the restart");
        assert!(before.query_one("SELECT count(*) FROM t", &[]).is_err(), "a session from before the restart answered");

        let mut after = connect(&pg.url("kit"));
        let count: i64 = after.query_one("SELECT count(*) FROM t", &[]).expect("query").get(0);
        assert_eq!(count, 3, "rows committed before the restart are kept");

        pg.stop().expect("stops");
        assert!(!pg.is_running());
        assert!(postgres::Client::connect(&pg.url("kit"), postgres::NoTls).is_err(), "a stopped server answered");
    }

    #[test]
    fn drop_stops_the_server_and_removes_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(pg) = PgServer::start(dir.path()).expect("PgServer starts") else { return };
        let (url, data) = (pg.url("postgres"), pg.data_dir().to_owned());
        assert!(data.join("PG_VERSION").is_file());
        drop(pg);
        assert!(!data.exists(), "the data directory outlived the server");
        assert!(postgres::Client::connect(&url, postgres::NoTls).is_err(), "a dropped server answered");
    }

    #[test]
    fn urls_name_the_loopback_port_and_encode_the_database() {
        let config: postgres::Config = loopback_url(15432, "a b/\"c").parse().expect("a valid URL");
        assert_eq!(config.get_dbname(), Some("a b/\"c"));
        assert_eq!(config.get_ports(), [15432]);
        assert_eq!(config.get_user(), Some("postgres"));
    }

    #[test]
    fn missing_binaries_skip_unless_required() {
        let reason = "(expected line: pg::tests::missing_binaries_skip_unless_required checks the SKIP path)";
        assert!(skip_or_fail(reason, false).is_ok());
        assert!(matches!(skip_or_fail(reason, true), Err(PgError::Required(r)) if r == reason));
    }

    #[test]
    fn the_highest_usable_version_wins() {
        let versions = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(highest_version(versions(&["9.6", "15", "12", "README"]), |_| true).as_deref(), Some("15"));
        assert_eq!(highest_version(versions(&["9.6", "15", "12"]), |v| v != "15").as_deref(), Some("12"));
        assert_eq!(highest_version(versions(&["10", "9.6"]), |_| true).as_deref(), Some("10"));
        assert_eq!(highest_version(versions(&[]), |_| true), None);
    }
}
