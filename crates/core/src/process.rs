//! Process-level setup both binaries share: loading the config at start (exit 2 naming the key), logging from
//! `[log]`, SIGTERM/SIGINT turned into one cancellation token, and the one report of the error that ends a
//! process ([`report_failure`]). The tracing subscriber is one of the two process-wide globals (with the metrics
//! registry handed down explicitly); nothing else here holds state.
//!
//! Output a person reads: log lines are coloured only when stderr is a terminal and `NO_COLOR` is not set
//! ([`use_colour`]), so a redirected log holds no escape codes; the error that ends a process is printed once.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::IsTerminal;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Log, LogFormat};

/// Installs the tracing subscriber on stderr: `[log] level` as the filter ([`Log::filter`], the one validation
/// checked; `RUST_LOG` overrides it), pretty or JSON lines per `[log] format`, colours per [`use_colour`].
pub fn init_logging(log: &Log) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| log.filter())
        .unwrap_or_else(|_| EnvFilter::new(crate::config::DEFAULT_LOG_LEVEL));
    let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Whether log lines get ANSI colours: only on a terminal, and never when `NO_COLOR` is set to a non-empty
/// value (<https://no-color.org>). A file or a pipe (systemd, docker, `2>log`) gets plain text.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Which process is failing: a daemon's stderr is its log stream, a hand-run command's is read by a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `integration run`, the housekeeping daemon.
    Daemon,
    /// A hand-run subcommand (`block`, `list`, `housekeeping --once` ...).
    Command,
}

/// How the error that ends a process is reported, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReport {
    /// An `error: ...` line on stderr.
    Line,
    /// One `error` log event: a daemon logging JSON keeps every line of its stream JSON.
    LogEvent,
}

/// The one way a failure is reported: a line a person reads, except for a daemon whose log is JSON.
pub fn failure_report(role: Role, format: LogFormat) -> FailureReport {
    match (role, format) {
        (Role::Daemon, LogFormat::Json) => FailureReport::LogEvent,
        _ => FailureReport::Line,
    }
}

/// Reports the error that ends the process, once ([`failure_report`] says how). `error` is printed with `{:#}`,
/// so an `anyhow` chain shows its context.
pub fn report_failure(role: Role, log: &Log, error: &dyn Display) {
    let text = format!("{error:#}");
    match failure_report(role, log.format) {
        FailureReport::Line => eprintln!("error: {text}"),
        FailureReport::LogEvent => tracing::error!(message = "Failed.", error = %text),
    }
}

/// Resolves on the first SIGTERM or SIGINT (SIGINT only where SIGTERM cannot be watched).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(token: CancellationToken) {
    shutdown_signal().await;
    token.cancel();
}

/// Which binary is starting: each checks the files only it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `integration`: also checks the syslog TLS certificate and key ([`Config::check_syslog_files`]).
    Integration,
    /// `housekeeping`: never listens for syslog, so never needs the syslog TLS files.
    Housekeeping,
}

/// Who tells the operator about [`Config::warnings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warnings {
    /// [`start`] logs each once.
    Log,
    /// The command prints them itself (`integration validate`): logging them too would show each twice.
    Command,
}

/// The start of both daemons: resolves the config path (`--config`, `$FORTIMISP_CONFIG`, the default), loads and
/// validates it, installs logging and, with [`Warnings::Log`], logs the config's warnings once.
///
/// # Errors
/// A config that cannot be loaded: the one-line message (naming the key) is printed on stderr and the contract's
/// exit code 2 is returned for `main` to exit with.
pub fn start(
    cli_config: Option<std::path::PathBuf>,
    daemon: Daemon,
    warnings: Warnings,
) -> Result<Config, std::process::ExitCode> {
    let path = Config::resolve_path(cli_config);
    let loaded = Config::load(&path).and_then(|config| {
        if daemon == Daemon::Integration {
            config.check_syslog_files()?;
        }
        Ok(config)
    });
    let config = loaded.map_err(|error| {
        eprintln!("error: {error}");
        std::process::ExitCode::from(EXIT_CONFIG)
    })?;
    init_logging(&config.log);
    if warnings == Warnings::Log {
        for warning in &config.warnings {
            tracing::warn!(message = "Config warning.", warning = %warning);
        }
    }
    Ok(config)
}

/// Exit code of a daemon or subcommand whose config cannot be loaded.
pub const EXIT_CONFIG: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    /// Colour only on a terminal; `NO_COLOR` with any non-empty value turns it off, an empty one does not.
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases: [(bool, Option<&str>, bool); 6] = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, expected) in cases {
            assert_eq!(use_colour(terminal, no_color.map(OsStr::new)), expected, "{terminal} {no_color:?}");
        }
    }

    /// A failure is reported one way: an `error:` line, except a JSON-logging daemon's, which stays JSON.
    #[test]
    fn a_failure_is_reported_one_way() {
        let cases = [
            (Role::Command, LogFormat::Pretty, FailureReport::Line),
            (Role::Command, LogFormat::Json, FailureReport::Line),
            (Role::Daemon, LogFormat::Pretty, FailureReport::Line),
            (Role::Daemon, LogFormat::Json, FailureReport::LogEvent),
        ];
        for (role, format, expected) in cases {
            assert_eq!(failure_report(role, format), expected, "{role:?} {format:?}");
        }
    }
}
