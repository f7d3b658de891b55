//! Process-level setup both binaries share: loading the config at start (exit 2 naming the key), logging from
//! `[log]`, and SIGTERM/SIGINT turned into one cancellation token. The tracing subscriber is one of the two process-wide globals (with the metrics registry
//! handed down explicitly); nothing else here holds state.

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Log, LogFormat};

/// Installs the tracing subscriber on stderr: `[log] level` as the filter ([`Log::filter`], the one validation
/// checked; `RUST_LOG` overrides it), pretty or JSON lines per `[log] format`.
pub fn init_logging(log: &Log) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| log.filter())
        .unwrap_or_else(|_| EnvFilter::new(crate::config::DEFAULT_LOG_LEVEL));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
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

/// The start of both daemons: resolves the config path (`--config`, `$FORTIMISP_CONFIG`, the default), loads and
/// validates it, installs logging and logs the config's warnings once.
///
/// # Errors
/// A config that cannot be loaded: the one-line message (naming the key) is printed on stderr and the contract's
/// exit code 2 is returned for `main` to exit with.
pub fn start(cli_config: Option<std::path::PathBuf>, daemon: Daemon) -> Result<Config, std::process::ExitCode> {
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
    for warning in &config.warnings {
        tracing::warn!(message = "Config warning.", warning = %warning);
    }
    Ok(config)
}

/// Exit code of a daemon or subcommand whose config cannot be loaded.
pub const EXIT_CONFIG: u8 = 2;
