//! The benchmark's HTTPS client: one `GET` of a feed per new TCP connection and TLS handshake, as a FortiGate's
//! pull does (minutes apart, no connection survives), with the phases timed.
//!
//! Written on tokio-rustls directly rather than with reqwest so that nothing is hidden: every fetch connects,
//! shakes hands without session resumption (a FortiGate pulling every few minutes cannot be assumed to resume),
//! sends `Connection: close`, and reads the status line, the headers (`Content-Length`, `ETag`) and exactly the
//! body. [`Fetch`] says when the handshake ended, when the header block was in (time to first byte, counted from
//! the start of the connect) and when the last body byte was.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The longest one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Fetches one URL path from one HTTPS server with basic auth.
#[derive(Clone)]
pub struct FeedClient {
    addr: SocketAddr,
    path: String,
    request_head: String,
    connector: TlsConnector,
}

/// One fetch.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub status: u16,
    pub etag: Option<String>,
    /// The body, when asked for ([`FeedClient::fetch`]'s `keep_body`); its length is always in `body_bytes`.
    pub body: Option<Vec<u8>>,
    pub body_bytes: u64,
    /// From the start of the connect to the end of the TLS handshake.
    pub handshake: Duration,
    /// From the start of the connect to the end of the response's header block (time to first byte).
    pub headers: Duration,
    /// From the start of the connect to the last body byte.
    pub total: Duration,
}

impl FeedClient {
    /// A client of `https://<addr><path>` trusting only `ca_pem`, sending `user`/`password`.
    pub fn new(addr: SocketAddr, path: &str, ca_pem: &str, user: &str, password: &str) -> Result<FeedClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.context("the CA PEM holds a certificate")?).context("a usable CA certificate")?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("rustls protocol versions")?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let request_head = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {}\r\nUser-Agent: feedbench\r\n\
             Accept: */*\r\nConnection: close\r\n",
            base64(format!("{user}:{password}").as_bytes())
        );
        Ok(FeedClient { addr, path: path.to_string(), request_head, connector: TlsConnector::from(Arc::new(config)) })
    }

    /// The path fetched.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// One fetch on a new connection; `if_none_match` makes it conditional. `keep_body`: return the body too.
    pub async fn fetch(&self, if_none_match: Option<&str>, keep_body: bool) -> Result<Fetch> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner(if_none_match, keep_body))
            .await
            .with_context(|| format!("GET {} on {} took over {FETCH_TIMEOUT:?}", self.path, self.addr))?
    }

    async fn fetch_inner(&self, if_none_match: Option<&str>, keep_body: bool) -> Result<Fetch> {
        let start = Instant::now();
        let tcp = TcpStream::connect(self.addr).await.with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_nodelay(true).ok();
        let name = ServerName::IpAddress(self.addr.ip().into());
        let mut tls = self.connector.connect(name, tcp).await.context("TLS handshake")?;
        let handshake = start.elapsed();
        let mut request = self.request_head.clone();
        if let Some(etag) = if_none_match {
            request.push_str(&format!("If-None-Match: {etag}\r\n"));
        }
        request.push_str("\r\n");
        tls.write_all(request.as_bytes()).await.context("sending the request")?;
        tls.flush().await.context("sending the request")?;

        let mut reader = BufReader::with_capacity(64 * 1024, tls);
        let mut line = String::new();
        reader.read_line(&mut line).await.context("reading the status line")?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let (mut length, mut etag) = (None::<u64>, None);
        loop {
            line.clear();
            if reader.read_line(&mut line).await.context("reading the headers")? == 0 {
                bail!("the connection closed inside the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok();
                } else if name.eq_ignore_ascii_case("etag") {
                    etag = Some(value.trim().to_string());
                }
            }
        }
        let headers = start.elapsed();

        let mut body = Vec::new();
        let body_bytes = match (status, length) {
            (304 | 204, _) | (100..=199, _) => 0,
            (_, Some(n)) if keep_body => {
                body.resize(usize::try_from(n).context("a body that fits in memory")?, 0);
                reader.read_exact(&mut body).await.context("reading the body")?;
                n
            }
            (_, Some(n)) => discard(&mut reader, Some(n)).await?,
            (_, None) if keep_body => reader.read_to_end(&mut body).await.context("reading the body")? as u64,
            (_, None) => discard(&mut reader, None).await?,
        };
        let total = start.elapsed();
        // close_notify, so neither server counts an aborted connection; not part of the timings.
        let _ = reader.into_inner().shutdown().await;
        Ok(Fetch { status, etag, body: keep_body.then_some(body), body_bytes, handshake, headers, total })
    }
}

/// Reads and drops `length` bytes (or up to the end of the stream); returns how many were read.
async fn discard<R: tokio::io::AsyncRead + Unpin>(reader: &mut R, length: Option<u64>) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let want = match length {
            Some(n) if read >= n => return Ok(read),
            Some(n) => buf.len().min(usize::try_from(n - read).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let got = reader.read(&mut buf[..want]).await.context("reading the body")?;
        if got == 0 {
            if length.is_some() {
                bail!("the connection closed after {read} of {length:?} body bytes");
            }
            return Ok(read);
        }
        read += got as u64;
    }
}

/// Standard base64 with padding (RFC 4648 §4), as basic auth encodes `user:password`.
fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}
