//! Process-level setup both binaries share: logging from `[log]`, and SIGTERM/SIGINT turned into one
//! cancellation token. The tracing subscriber is one of the two process-wide globals (with the metrics registry
//! handed down explicitly); nothing else here holds state.

use tokio_util::sync::CancellationToken;

use crate::config::{Log, LogFormat};

/// Installs the tracing subscriber on stderr: `[log] level` as the filter (`RUST_LOG` overrides it), pretty or
/// JSON lines per `[log] format`.
pub fn init_logging(log: &Log) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else { return };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    token.cancel();
}
