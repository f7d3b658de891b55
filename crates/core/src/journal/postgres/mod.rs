//! The PostgreSQL store: the same three tables and invariants as SQLite, in a database several instances can
//! share. [`Database`] is its [`Backend`]; degraded mode is [`super::buffered`]'s, so when PostgreSQL is
//! unreachable (refused, reset, restarting, timing out) writes are kept in memory and written back once a
//! reconnect succeeds.
//!
//! The client is the synchronous `postgres` crate: the journal's writer is a plain thread, and the connection is
//! made and dropped on that thread only (the crate runs a small runtime of its own, which must not be started or
//! dropped inside the daemons' runtime). No call can block the writer for ever: connecting waits at most
//! [`CONNECT_TIMEOUT`]; a statement at most [`super::BUSY_TIMEOUT`] on the server (`statement_timeout`,
//! `lock_timeout`); a connection whose peer vanished is dropped by the kernel after [`TCP_USER_TIMEOUT`].
//!
//! # Layout
//! - `schema`: migrations in a `schema_migrations` table, applied under an advisory lock.
//! - `sql`: the statements of each table, and export/import.
//! - here: [`PostgresTarget`] (the URL, password and TLS from `[state]`), connecting, and which errors mean
//!   "unavailable".

mod schema;
mod sql;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::{Client, NoTls};

use super::buffered::{Backend, Buffered, Failure, Replayed};
use super::shadow::{self, Applied, Op};
use super::transfer::{Imported, Row};
use super::{BlockRecord, Error, PendingAction, PendingQuery, Pruned, BUSY_TIMEOUT};
use crate::secret::ApiKey;

/// How long connecting (TCP, TLS, authentication) may take before the try counts as "unavailable".
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Unacknowledged data older than this makes the kernel drop the connection (a peer gone without a reset).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// While PostgreSQL stays unreachable, retries back off up to this interval.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// The PostgreSQL journal with its degraded mode.
pub(crate) type PostgresStore = Buffered<Database>;

/// How the connection is encrypted: `sslmode` in `[state] url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// `disable` (or absent): plain TCP.
    Disable,
    /// `require` or `verify-full`: TLS through rustls; the server's certificate and name are verified either way
    /// (against `[state] ca_file`, or the system's roots).
    Verify,
}

/// Where a PostgreSQL journal is and how to reach it, from a validated `[state]`.
#[derive(Clone)]
pub struct PostgresTarget {
    config: postgres::Config,
    /// The URL as configured, without `sslmode` (it never holds a password): for messages.
    location: String,
    ssl: SslMode,
    ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget").field("location", &self.location).field("ssl", &self.ssl).finish()
    }
}

impl PostgresTarget {
    /// Builds the connection settings. `url` is `postgres://user@host:port/db` with an optional `sslmode`.
    ///
    /// # Errors
    /// A URL the client cannot read, a password in it, or an `sslmode` other than disable, require or verify-full.
    pub fn new(url: &str, password: Option<&ApiKey>, ca_file: Option<PathBuf>) -> Result<PostgresTarget, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err("scheme must be postgres://".into());
        }
        if parsed.password().is_some() {
            return Err("must not carry a password; use state.password_file or $FORTIMISP_STATE_PASSWORD".into());
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("has no host".into());
        }
        let mut ssl = SslMode::Disable;
        let mut kept = parsed.clone();
        kept.set_query(None);
        {
            let mut query = kept.query_pairs_mut();
            for (key, value) in parsed.query_pairs() {
                if key == "sslmode" {
                    ssl = match value.as_ref() {
                        "disable" => SslMode::Disable,
                        "require" | "verify-full" => SslMode::Verify,
                        other => return Err(format!("sslmode={other}: use disable, require or verify-full")),
                    };
                } else {
                    query.append_pair(&key, &value);
                }
            }
        }
        let mut text = kept.to_string();
        if text.ends_with('?') {
            text.pop();
        }
        let mut config: postgres::Config = text.parse().map_err(|e| format!("not a PostgreSQL URL ({e})"))?;
        if let Some(password) = password {
            config.password(password.expose());
        }
        let timeout_ms = BUSY_TIMEOUT.as_millis();
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("fortimisp")
            // client_min_messages: no NOTICE (`CREATE ... IF NOT EXISTS` of a migrated schema) in the logs.
            .options(&format!(
                "-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} -c client_min_messages=warning"
            ));
        if ssl == SslMode::Verify {
            config.ssl_mode(postgres::config::SslMode::Require);
        }
        Ok(PostgresTarget { config, location: text, ssl, ca_file })
    }

    /// The URL as configured (without `sslmode`), for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The database name in the URL.
    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The password the connection will send, for the config tests.
    #[cfg(test)]
    pub(crate) fn password_for_tests(&self) -> Option<&str> {
        self.config.get_password().and_then(|p| std::str::from_utf8(p).ok())
    }

    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.ssl == SslMode::Verify
    }

    /// The same server, another database (the tests' fresh databases).
    pub fn with_database(&self, database: &str) -> PostgresTarget {
        let mut next = self.clone();
        next.config.dbname(database);
        if let Some((base, _)) = self.location.rsplit_once('/') {
            next.location = format!("{base}/{database}");
        }
        next
    }

    /// Connects (no migrations).
    ///
    /// # Errors
    /// PostgreSQL refuses or cannot be reached, or the TLS files cannot be read.
    pub fn connect(&self) -> Result<Client, Error> {
        let result = match self.ssl {
            SslMode::Disable => self.config.connect(NoTls),
            SslMode::Verify => {
                let tls = tls_config(self.ca_file.as_deref())
                    .map_err(|message| Error::Setup { at: self.location.clone(), message })?;
                self.config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
        };
        result.map_err(|source| Error::Postgres { at: self.location.clone(), source })
    }
}

/// rustls (ring) trusting `ca_file`, or the system's roots without one.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("state.ca_file: cannot read {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("state.ca_file: {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("state.ca_file: {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// True for errors that mean "PostgreSQL cannot take this now" (degrade, reconnect, retry): no answer at all
/// (refused, reset, closed, timed out, TLS), connection and operator-intervention classes (`08`, `57`: shutdown,
/// restart, `pg_terminate_backend`, statement timeout), insufficient resources (`53`), lock timeouts,
/// serialisation failures and a read-only server (a standby after failover). Anything else is about the statement.
pub(super) fn is_unavailable(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let Some(code) = error.code() else {
        // No SQLSTATE: no answer (I/O, timeout, TLS), unless a value did not convert, which is about the data.
        let wrong_type =
            std::error::Error::source(error).is_some_and(|s| s.downcast_ref::<postgres::types::WrongType>().is_some());
        return !wrong_type;
    };
    let code = code.code();
    ["08", "53", "57", "58"].iter().any(|class| code.starts_with(class))
        || matches!(code, "55P03" | "40001" | "40P01" | "25006")
}

/// A PostgreSQL journal database: the target and, while connected, the client.
pub(crate) struct Database {
    target: PostgresTarget,
    client: Option<Client>,
}

impl Database {
    pub(super) fn new(target: PostgresTarget) -> Database {
        Database { target, client: None }
    }

    fn error(&self, source: postgres::Error) -> Error {
        Error::Postgres { at: self.target.location.clone(), source }
    }

    /// A failure, classified; an unavailable one drops the client so the next call reconnects.
    fn failure(&mut self, source: postgres::Error) -> Failure {
        if is_unavailable(&source) {
            self.client = None;
            Failure::Unavailable(self.error(source))
        } else {
            Failure::Fatal(self.error(source))
        }
    }

    /// The client, connecting first if there is none.
    fn client(&mut self) -> Result<&mut Client, Failure> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.open().map_err(Failure::Unavailable)?;
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn run<T>(&mut self, call: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, Failure> {
        let result = call(self.client()?);
        result.map_err(|source| self.failure(source))
    }
}

impl Backend for Database {
    const MAX_RETRY: Duration = MAX_RETRY_INTERVAL;

    fn location(&self) -> String {
        self.target.location.clone()
    }

    fn is_open(&self) -> bool {
        self.client.is_some()
    }

    fn can_open(&self) -> bool {
        true
    }

    fn open(&mut self) -> Result<(), Error> {
        self.client = None;
        let mut client = self.target.connect()?;
        schema::migrate(&mut client, &self.target.location)?;
        self.client = Some(client);
        Ok(())
    }

    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Applied>, Failure> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            let mut applied = Vec::with_capacity(ops.len());
            for op in ops {
                applied.push(sql::apply(&mut tx, op, &|id| id)?);
            }
            tx.commit()?;
            Ok(applied)
        })
    }

    fn replay(
        &mut self,
        restore: &[PendingAction],
        backlog: &[Op],
        known: &HashMap<i64, i64>,
        skipped: &mut Vec<(Op, String)>,
    ) -> Result<Replayed, Failure> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            for p in restore {
                sql::restore(&mut tx, p)?;
            }
            if !restore.is_empty() {
                sql::bump_sequences(&mut tx)?;
            }
            // A failed statement aborts a PostgreSQL transaction: each entry runs in a savepoint, so one rejected
            // entry is skipped without losing the others.
            let remap = shadow::replay_ops(
                backlog,
                known,
                skipped,
                |op, translate| {
                    let mut savepoint = tx.savepoint("entry")?;
                    let applied = sql::apply(&mut savepoint, op, translate)?;
                    savepoint.commit()?;
                    Ok(applied)
                },
                is_unavailable,
            )?;
            let pending = sql::load_pending(&mut tx, &PendingQuery::default())?;
            tx.commit()?;
            Ok((remap, pending))
        })
    }

    fn load_pending(&mut self, query: &PendingQuery) -> Result<Vec<PendingAction>, Failure> {
        self.run(|client| sql::load_pending(client, query))
    }

    fn count_pending(&mut self, query: &PendingQuery) -> Result<usize, Failure> {
        self.run(|client| sql::count_pending(client, query))
    }

    fn load_active(&mut self) -> Result<Vec<BlockRecord>, Failure> {
        self.run(sql::load_active)
    }

    fn prune(&mut self, older_than: DateTime<Utc>) -> Result<Pruned, Error> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            let pruned = sql::prune(&mut tx, older_than)?;
            tx.commit()?;
            Ok(pruned)
        })
        .map_err(Failure::into_error)
    }

    fn export(&mut self) -> Result<Vec<Row>, Error> {
        self.run(sql::export_rows).map_err(Failure::into_error)
    }

    fn import(&mut self, rows: &[Row]) -> Result<Imported, Error> {
        let at = self.target.location.clone();
        self.run(|client| {
            let mut tx = client.transaction()?;
            // One importer at a time, and nobody writing meanwhile.
            tx.batch_execute("LOCK TABLE actions, decisions, blocks IN EXCLUSIVE MODE")?;
            let existing = sql::row_count(&mut tx)?;
            if existing > 0 {
                return Ok(Err(Error::NotEmpty { at: at.clone(), rows: existing }));
            }
            let mut imported = Imported::default();
            for row in rows {
                sql::import_row(&mut tx, row)?;
                imported.count(row);
            }
            sql::bump_sequences(&mut tx)?;
            tx.commit()?;
            Ok(Ok(imported))
        })
        .map_err(Failure::into_error)?
    }

    #[cfg(test)]
    fn recent_decisions(&mut self, limit: usize) -> Result<Vec<super::Decision>, Error> {
        self.run(|client| sql::load_recent(client, limit)).map_err(Failure::into_error)
    }
}

impl PostgresStore {
    /// A store that connects on its first use, on the writer thread (see `Journal::open_postgres`).
    pub(super) fn unconnected(target: PostgresTarget) -> PostgresStore {
        Buffered::new(Database::new(target))
    }
}

/// The schema version, for the contract tests.
#[cfg(test)]
pub(crate) const SCHEMA_VERSION_FOR_TESTS: i64 = schema::SCHEMA_VERSION;
