//! The syslog listeners: UDP, TCP (RFC 6587 octet counting and LF framing) and TCP over TLS.
//!
//! Each listener owns its socket and hands every message to [`Ingest`] on its own task. The UDP loop never
//! waits on anything but the socket: it parses in place from its receive buffer and drops (counting) when the
//! decision stage is full. Stream listeners read with a [`FrameDecoder`] per connection and wait for room
//! downstream, which pushes back on the sender through TCP flow control.
//!
//! Limits: at most [`MAX_CONNECTIONS`] stream connections at once; a further connection waits in the accept
//! backlog until one closes. A connection silent for [`IDLE_TIMEOUT`] is closed.
//!
//! The TLS server config of every TLS listener (syslog here, the threat feed in `feed::serve`) is loaded by
//! [`tls_server_config`], whose errors name the listener's config keys ([`TlsKeys`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fortimisp_core::metrics::Metrics;
use fortimisp_core::syslog::{self, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::ingest::Ingest;

/// Stream connections served at once; beyond it, new connections wait to be accepted.
pub const MAX_CONNECTIONS: usize = 512;
/// A stream connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Binds the UDP socket with the requested receive buffer (the kernel may grant less; that is logged).
pub fn bind_udp(addr: SocketAddr, recv_buffer_bytes: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too on `[::]`.
        let _ = socket.set_only_v6(false);
    }
    if let Err(error) = socket.set_recv_buffer_size(recv_buffer_bytes) {
        warn!(message = "Could not set the UDP receive buffer.", %error, requested = recv_buffer_bytes);
    }
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < recv_buffer_bytes {
        warn!(
            message = "Kernel granted a smaller UDP receive buffer than requested; raise net.core.rmem_max to avoid drops under bursts.",
            requested = recv_buffer_bytes,
            granted
        );
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Receives datagrams until `shutdown`. One datagram is one message. The socket is shared so that a restarted
/// listener reads from the same one.
pub async fn run_udp(
    socket: Arc<UdpSocket>,
    ingest: Arc<Ingest>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) {
    // One byte more than the largest datagram so an oversize one is seen as such, not truncated silently.
    let mut buf = vec![0u8; 65536];
    let metrics = ingest.metrics();
    // Datagrams the kernel drops because the receive buffer is full never reach us: read its counter for this
    // socket once a second so those drops are counted too (`reason="kernel_rcvbuf"`).
    let mut kernel = KernelDrops::new(&socket);
    // At 0 from the start, so the alert on kernel drops sees the first one.
    Metrics::start_at_zero(&metrics.dropped, &["kernel_rcvbuf"]);
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let (len, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = every_second.tick() => {
                let new = kernel.poll();
                if new > 0 {
                    metrics.dropped.get_or_create(&fortimisp_core::metrics::Reason { reason: "kernel_rcvbuf" })
                        .inc_by(new);
                }
                continue;
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(error) => {
                    // ICMP errors surface here on some systems; the socket stays usable.
                    debug!(message = "UDP receive error.", %error);
                    continue;
                }
            },
        };
        let received = Instant::now();
        Metrics::inc(&metrics.received, "udp");
        if !ingest.sender_allowed(peer.ip()) {
            continue;
        }
        match syslog::datagram(&buf[..len], max_message_bytes) {
            Ok(message) => ingest.offer_nowait(message, received),
            Err(_) => Metrics::inc(&metrics.dropped, "oversize"),
        }
    }
}

/// The kernel's count of datagrams dropped for one UDP socket (receive buffer full), from `/proc/net/udp` and
/// `/proc/net/udp6`, matched by the socket's inode. Reads nothing where `/proc` is absent (not Linux).
struct KernelDrops {
    inode: Option<u64>,
    seen: u64,
}

impl KernelDrops {
    fn new(socket: &UdpSocket) -> Self {
        #[cfg(target_os = "linux")]
        let inode = {
            use std::os::fd::AsRawFd;
            std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd()))
                .ok()
                .and_then(|link| link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        };
        #[cfg(not(target_os = "linux"))]
        let inode = {
            let _ = socket;
            None
        };
        // Drops before this run (a restarted listener) were counted by the run before it.
        let mut drops = KernelDrops { inode, seen: 0 };
        drops.poll();
        drops
    }

    /// Drops since the last call.
    fn poll(&mut self) -> u64 {
        let Some(inode) = self.inode else { return 0 };
        let total = ["/proc/net/udp", "/proc/net/udp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .find_map(|text| {
                text.lines().skip(1).find_map(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    (cols.get(9)?.parse::<u64>().ok()? == inode).then(|| cols.last()?.parse::<u64>().ok())?
                })
            });
        let Some(total) = total else { return 0 };
        let new = total.saturating_sub(self.seen);
        self.seen = total;
        new
    }
}

/// The config keys a TLS listener's files come from, named in its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsKeys {
    pub cert: &'static str,
    pub key: &'static str,
}

impl TlsKeys {
    /// The syslog TLS listener's (`[syslog.tls]`).
    pub const SYSLOG: TlsKeys = TlsKeys { cert: "syslog.tls_cert", key: "syslog.tls_key" };
}

/// Why a TLS listener cannot be set up. Each names the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be opened, or its PEM cannot be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {} holds no certificate", path.display())]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("{key}: {} holds no private key", path.display())]
    NoKey { key: &'static str, path: PathBuf },
    /// rustls refused the pair (a key that does not match the certificate, an unsupported key type).
    #[error("{key}: {source}")]
    Rejected {
        key: &'static str,
        #[source]
        source: rustls::Error,
    },
}

/// The syslog TLS listener's acceptor from PEM files.
///
/// # Errors
/// [`TlsError`], naming `syslog.tls_cert` or `syslog.tls_key`.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    tls_server_config(TlsKeys::SYSLOG, cert, key).map(|config| tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A rustls server config (ring provider, TLS 1.2 and 1.3) serving the chain in `cert` with the private key in
/// `key`; shared by every TLS listener, which may add to it (ALPN).
///
/// # Errors
/// [`TlsError`], naming `keys.cert` or `keys.key`.
pub fn tls_server_config(keys: TlsKeys, cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let read = |key: &'static str, path: &Path| {
        let error = |source| TlsError::Read { key, path: path.to_path_buf(), source };
        std::fs::File::open(path).map(std::io::BufReader::new).map_err(error)
    };
    let certs = rustls_pemfile::certs(&mut read(keys.cert, cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read { key: keys.cert, path: cert.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { key: keys.cert, path: cert.to_path_buf() });
    }
    let private_key = rustls_pemfile::private_key(&mut read(keys.key, key)?)
        .map_err(|source| TlsError::Read { key: keys.key, path: key.to_path_buf(), source })?
        .ok_or_else(|| TlsError::NoKey { key: keys.key, path: key.to_path_buf() })?;
    let rejected = |source| TlsError::Rejected { key: keys.key, source };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(rejected)
}

/// Accepts stream connections until `shutdown`; with `tls`, each is wrapped in TLS first.
pub async fn run_stream(
    listener: Arc<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ingest: Arc<Ingest>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) {
    let kind: &'static str = if tls.is_some() { "tls" } else { "tcp" };
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    warn!(message = "Accept failed.", %error, listener = kind);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !ingest.sender_allowed(peer.ip()) {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let ingest = ingest.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let span = tracing::info_span!("syslog_connection", %peer, listener = kind);
        tokio::spawn(
            async move {
                let _permit = permit;
                debug!(message = "Connection opened.");
                match tls {
                    None => read_stream(stream, kind, &ingest, max_message_bytes, &shutdown).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => read_stream(stream, kind, &ingest, max_message_bytes, &shutdown).await,
                            Ok(Err(error)) => {
                                Metrics::inc(&ingest.metrics().dropped, "tls_handshake");
                                info!(message = "TLS handshake failed.", %error);
                            }
                            Err(_) => Metrics::inc(&ingest.metrics().dropped, "tls_handshake"),
                        }
                    }
                }
                debug!(message = "Connection closed.");
            }
            .instrument(span),
        );
    }
}

/// Reads framed messages from one connection until it closes, goes idle, or `shutdown`.
async fn read_stream<S: AsyncRead + Unpin>(
    mut stream: S,
    kind: &'static str,
    ingest: &Ingest,
    max_message_bytes: usize,
    shutdown: &CancellationToken,
) {
    let metrics = ingest.metrics();
    let mut decoder = FrameDecoder::new(max_message_bytes);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        // Drain every complete message already buffered.
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    Metrics::inc(&metrics.received, kind);
                    if !ingest.offer(&message, Instant::now()).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    Metrics::inc(&metrics.dropped, "framing");
                    debug!(message = "Framing error; message skipped.", %error);
                }
            }
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) => {
                match decoder.decode_eof(&mut buf) {
                    Ok(Some(message)) => {
                        Metrics::inc(&metrics.received, kind);
                        ingest.offer(&message, Instant::now()).await;
                    }
                    Ok(None) => {}
                    Err(_) => Metrics::inc(&metrics.dropped, "framing"),
                }
                return;
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                debug!(message = "Read error; closing connection.", %error);
                return;
            }
            Err(_) => {
                debug!(message = "Idle connection closed.");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    /// Each way the TLS files can be wrong is its own variant, naming the key at fault.
    #[test]
    fn tls_file_errors_are_typed_and_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (cert, key, empty) = (file("cert.pem", PEM_CERT), file("key.pem", PEM_KEY), file("empty.pem", ""));
        let missing = dir.path().join("missing.pem");
        let check = |cert: &Path, key: &Path| tls_acceptor(cert, key).err().expect("an error");
        assert!(matches!(check(&missing, &key), TlsError::Read { key: "syslog.tls_cert", .. }));
        assert!(
            matches!(check(&empty, &key), TlsError::NoCertificate { key: "syslog.tls_cert", path } if path == empty)
        );
        assert!(matches!(check(&cert, &missing), TlsError::Read { key: "syslog.tls_key", .. }));
        assert!(matches!(check(&cert, &empty), TlsError::NoKey { key: "syslog.tls_key", path } if path == empty));
        let rejected = check(&cert, &key);
        assert!(matches!(rejected, TlsError::Rejected { key: "syslog.tls_key", .. }), "{rejected:?}");
        assert!(rejected.to_string().starts_with("syslog.tls_key: "), "{rejected}");
    }
}
