//! Test fixtures for the journal contract suite: a fresh journal of either store, and a TCP proxy that can cut
//! the connection to PostgreSQL. Test-only.
//!
//! PostgreSQL comes from `$FORTIMISP_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`,
//! the CI's). Each test gets a database of its own, `fortimisp_test_<random>`, dropped when the fixture goes.
//! Without a server a PostgreSQL test prints a loud `SKIP` line and passes, unless `FORTIMISP_REQUIRE_POSTGRES=1`.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Journal, PostgresTarget};

/// Set to `1` to fail, rather than skip, the PostgreSQL tests when no server answers (CI sets it).
pub const REQUIRE_POSTGRES: &str = "FORTIMISP_REQUIRE_POSTGRES";
/// The server the PostgreSQL tests use (an administrative database on it, to create theirs).
pub const TEST_POSTGRES_URL: &str = "FORTIMISP_TEST_POSTGRES_URL";

fn admin_url() -> String {
    std::env::var(TEST_POSTGRES_URL).unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs `f` on a thread of its own: the synchronous client must not start its runtime inside the test's.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("the helper thread does not panic")
}

/// Which store a contract test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A fresh, empty journal store that several handles ("processes") can open.
pub enum Fixture {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres(Box<TestDatabase>),
}

impl Fixture {
    /// A new store of `kind`; `None` (after the SKIP line) when PostgreSQL is absent and not required.
    pub fn new(kind: Kind, test: &str) -> Option<Fixture> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("state").join("state.db");
                Some(Fixture::Sqlite { _dir: dir, path })
            }
            Kind::Postgres => TestDatabase::create(test).map(|db| Fixture::Postgres(Box::new(db))),
        }
    }

    /// A handle of its own on the store, as another process would open it.
    pub fn open(&self) -> Journal {
        match self {
            Fixture::Sqlite { path, .. } => Journal::open(path).expect("journal opens"),
            Fixture::Postgres(db) => Journal::open_postgres(&db.target).expect("journal connects"),
        }
    }
}

/// A database created for one test and dropped (connections and all) when this goes.
pub struct TestDatabase {
    pub target: PostgresTarget,
    pub name: String,
    admin: PostgresTarget,
}

impl TestDatabase {
    /// Creates `fortimisp_test_<random>`; `None` when no server answers and `FORTIMISP_REQUIRE_POSTGRES` is unset.
    pub fn create(test: &str) -> Option<TestDatabase> {
        let url = admin_url();
        let admin = PostgresTarget::new(&url, None, None).expect("a valid test URL");
        let name = format!("fortimisp_test_{:016x}", rand::random::<u64>());
        let created = {
            let (admin, name) = (admin.clone(), name.clone());
            off_runtime(move || {
                let mut client = admin.connect()?;
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .map_err(|source| super::Error::Postgres { at: admin.location().to_owned(), source })
            })
        };
        match created {
            Ok(()) => Some(TestDatabase { target: admin.with_database(&name), name, admin }),
            Err(error) => {
                let required = std::env::var(REQUIRE_POSTGRES).is_ok_and(|v| v == "1");
                assert!(!required, "{REQUIRE_POSTGRES}=1 but PostgreSQL is not usable at {url}: {error}");
                // Straight to stderr, past the test harness's capture, so the skip shows in every run.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIP {test}: no PostgreSQL at {url} ({error}); set {REQUIRE_POSTGRES}=1 to fail instead"
                );
                None
            }
        }
    }

    /// Runs `sql` in the test database on a connection of its own.
    pub fn execute(&self, sql: &str) {
        let (target, sql) = (self.target.clone(), sql.to_owned());
        off_runtime(move || target.connect().expect("connect").batch_execute(&sql).expect("statement runs"));
    }

    /// Ends every other session on the test database (`pg_terminate_backend`), as a PostgreSQL restart would.
    pub fn terminate_sessions(&self) -> u64 {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        off_runtime(move || {
            let mut client = admin.connect().expect("connect");
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .expect("terminate");
            rows.len() as u64
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = off_runtime(move || {
            admin.connect().and_then(|mut c| {
                c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .map_err(|source| super::Error::Postgres { at: admin.location().to_owned(), source })
            })
        });
        if let Err(error) = dropped {
            eprintln!("test database {} not dropped: {error}", self.name);
        }
    }
}

/// A loopback TCP proxy in front of PostgreSQL that a test can cut: while cut, open connections are closed and
/// new ones are accepted and closed at once (as a server that went away).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let (cut, open, stop) =
            (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (cut2, open2, stop2) = (cut.clone(), open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if cut2.load(Ordering::Relaxed) {
                            drop(client);
                            continue;
                        }
                        client.set_nonblocking(false).expect("blocking");
                        let Ok(server) = TcpStream::connect(upstream) else { continue };
                        let mut list = open2.lock().expect("proxy lock");
                        list.push(client.try_clone().expect("clone"));
                        list.push(server.try_clone().expect("clone"));
                        drop(list);
                        pipe(client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                        pipe(server, client);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { addr, cut, open, stop }
    }

    /// Cuts (closes every open connection, refuses new ones) or restores the path to PostgreSQL.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
        if cut {
            for stream in self.open.lock().expect("proxy lock").drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set_cut(true);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

impl TestDatabase {
    /// The test database reached through `addr` (a [`Proxy`]) instead of directly.
    pub fn via(&self, addr: SocketAddr) -> PostgresTarget {
        let mut url = url::Url::parse(&admin_url()).expect("a valid test URL");
        url.set_ip_host(addr.ip()).expect("an IP host");
        url.set_port(Some(addr.port())).expect("a port");
        url.set_path(&format!("/{}", self.name));
        PostgresTarget::new(url.as_str(), None, None).expect("a valid proxy URL")
    }

    /// The server's address, for a [`Proxy`] in front of it.
    pub fn server_addr(&self) -> SocketAddr {
        use std::net::ToSocketAddrs;
        let url = url::Url::parse(&admin_url()).expect("a valid test URL");
        let host = url.host_str().expect("a host").trim_matches(|c| c == '[' || c == ']').to_owned();
        (host.as_str(), url.port().unwrap_or(5432)).to_socket_addrs().expect("resolves").next().expect("an address")
    }
}
