//! A loopback TCP proxy that a test can partition ([`CutProxy`]): in front of a PostgreSQL server, it stands for
//! the network between one fortimisp instance and its journal, so one instance can lose PostgreSQL while the
//! others keep theirs.
//!
//! - [`cut`](CutProxy::cut): a partition. Nothing more is relayed, in either direction, on any open connection,
//!   and none is closed: the client sees no answer and no RST. New connections are accepted (the kernel would
//!   complete the handshake anyway) but never relayed.
//! - [`heal`](CutProxy::heal): the partition ends. New connections are relayed; every connection that lived through
//!   the cut (open when it began, or accepted during it) is reset, client and server side, as a real partition
//!   ends with the peers' state gone, so the client reconnects.
//! - [`reset`](CutProxy::reset): every connection open now is reset at once (RST, as a server or middlebox that
//!   died); the proxy keeps accepting, and keeps its cut or healed state.
//!
//! While cut, the server keeps the sessions of the cut connections (with their transactions and locks) until the
//! heal, as PostgreSQL would until its keepalives gave up.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy's state, as every connection task sees it. Counters, not flags, so a task that was not scheduled
/// between a cut and a heal still learns that it lived through one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    /// Whether a partition is in force.
    cut: bool,
    /// Partitions begun so far.
    cuts: u64,
    /// Resets so far.
    resets: u64,
}

/// What a connection born under `born` does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Relay,
    /// Partitioned: kept open, nothing relayed.
    Hold,
    /// Reset, client and server side.
    Close,
}

fn fate(born: Control, now: Control) -> Fate {
    if now.resets != born.resets {
        Fate::Close
    } else if born.cut || now.cuts != born.cuts {
        if now.cut {
            Fate::Hold
        } else {
            Fate::Close
        }
    } else {
        Fate::Relay
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicUsize,
}

/// A TCP proxy on 127.0.0.1 (a port of its own) in front of `upstream`, that can be cut, healed and reset.
///
/// Its tasks run on the tokio runtime that [`start`](CutProxy::start) was awaited on; its methods are
/// synchronous and can be called from anywhere. Dropping it closes every connection.
#[derive(Debug)]
pub struct CutProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: watch::Sender<Control>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// Binds 127.0.0.1 on a free port and relays each connection to `upstream` (connected when the client comes).
    pub async fn start(upstream: SocketAddr) -> std::io::Result<CutProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (control, _) = watch::channel(Control::default());
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, control.subscribe(), counters.clone()));
        Ok(CutProxy { addr, upstream, control, counters, accept })
    }

    /// The proxy's address, for the client's URL in place of the server's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the proxy relays to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Partitions: from now on no byte is relayed on any connection, none is closed, new ones are held. Once this
    /// returns, no connection task relays another byte (a task checks the state before it relays). A no-op when
    /// already cut.
    pub fn cut(&self) {
        self.control.send_modify(|c| {
            if !c.cut {
                c.cut = true;
                c.cuts += 1;
            }
        });
    }

    /// Ends the partition: new connections are relayed, those that lived through the cut are reset. A no-op when
    /// not cut.
    pub fn heal(&self) {
        self.control.send_modify(|c| c.cut = false);
    }

    /// Resets every connection open now (RST to the client, and to the server); keeps accepting.
    pub fn reset(&self) {
        self.control.send_modify(|c| c.resets += 1);
    }

    /// Whether a partition is in force.
    pub fn is_cut(&self) -> bool {
        self.control.borrow().cut
    }

    /// Connections accepted so far (relayed or not). A client's connect can return before the proxy has accepted:
    /// count after the first answer, or wait for the count.
    pub fn connections(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed (relayed or held).
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        // The connection tasks see the (only) sender go and close their sockets.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    control: watch::Receiver<Control>,
    counters: Arc<Counters>,
) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                counters.open.fetch_add(1, Ordering::SeqCst);
                let open = OpenGuard(counters.clone());
                tokio::spawn(serve(client, upstream, control.clone(), open));
            }
            // Out of descriptors or an aborted handshake: try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Counts a connection open until its task ends.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, mut control: watch::Receiver<Control>, _open: OpenGuard) {
    let _ = client.set_nodelay(true);
    let born = *control.borrow_and_update();
    let mut server = None;
    if fate(born, born) == Fate::Relay {
        tokio::select! {
            biased;
            alive = until(&mut control, born, |f| f != Fate::Relay) => if !alive { return },
            connected = TcpStream::connect(upstream) => match connected {
                Ok(stream) => server = Some(stream),
                // The server is down: the client sees its connection closed, as it would the server's refusal.
                Err(_) => return,
            },
        }
    }
    if let Some(upstream) = server.as_mut() {
        let _ = upstream.set_nodelay(true);
        // `biased`: every time the task wakes it looks at the state before it relays anything.
        tokio::select! {
            biased;
            alive = until(&mut control, born, |f| f != Fate::Relay) => if !alive { return },
            // One side closed (or failed): done, both closed normally.
            _ = tokio::io::copy_bidirectional(&mut client, upstream) => return,
        }
    }
    // Held (cut) or closing: nothing more is relayed; wait for the heal or a reset, then reset both sides.
    if until(&mut control, born, |f| f == Fate::Close).await {
        abort(&client);
        if let Some(upstream) = &server {
            abort(upstream);
        }
    }
}

/// Waits until the connection's fate satisfies `wanted`: `true` then, `false` if the proxy went away.
async fn until(control: &mut watch::Receiver<Control>, born: Control, wanted: impl Fn(Fate) -> bool) -> bool {
    control.wait_for(|now| wanted(fate(born, *now))).await.is_ok()
}

/// Makes the socket's close an RST (SO_LINGER 0); the close itself happens when the stream is dropped.
fn abort(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::sync::mpsc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    use super::*;
    use crate::pg::PgServer;

    /// How long a client waits for an answer before it counts as none. Only ever the expected outcome of a cut:
    /// a slow machine can make a broken proxy pass, never a working one fail.
    const NO_ANSWER: Duration = Duration::from_millis(400);
    /// How long a client waits for what must come (an answer, an error): a hang guard, not a speed check.
    const MUST_COME: Duration = Duration::from_secs(30);

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut answer = vec![0; message.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    /// Reads until the stream closes: `Ok(())` for an RST or a FIN, the error for anything else.
    async fn closed(stream: &mut TcpStream) -> std::io::Result<()> {
        let mut buf = [0; 64];
        match timeout(MUST_COME, stream.read(&mut buf)).await {
            Err(_) => Err(std::io::Error::new(ErrorKind::TimedOut, "still open")),
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(_)) => Err(std::io::Error::other("relayed bytes")),
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            Ok(Err(e)) => Err(e),
        }
    }

    async fn wait_for_connections(proxy: &CutProxy, n: u64) {
        timeout(MUST_COME, async {
            while proxy.connections() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the proxy accepts the connection");
    }

    #[tokio::test]
    async fn a_cut_relays_nothing_and_closes_nothing_and_a_heal_resets_what_lived_through_it() {
        let proxy = CutProxy::start(echo_server().await).await.expect("proxy starts");
        let mut before = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut before, b"ping").await.expect("relayed"), b"ping");
        assert_eq!(proxy.connections(), 1);

        proxy.cut();
        assert!(proxy.is_cut());
        before.write_all(b"lost").await.expect("the write is accepted: nothing is closed");
        let mut buf = [0; 4];
        assert!(timeout(NO_ANSWER, before.read(&mut buf)).await.is_err(), "an answer, or a close, through a cut");

        let mut during = TcpStream::connect(proxy.addr()).await.expect("accepted while cut");
        during.write_all(b"held").await.expect("write");
        wait_for_connections(&proxy, 2).await;
        assert!(timeout(NO_ANSWER, during.read(&mut buf)).await.is_err(), "a new connection relayed through a cut");
        assert_eq!(proxy.open_connections(), 2, "a cut closed a connection");

        proxy.heal();
        closed(&mut before).await.expect("the connection from before the cut is closed by the heal");
        closed(&mut during).await.expect("the connection accepted during the cut is closed by the heal");
        let mut after = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut after, b"pong").await.expect("relayed after the heal"), b"pong");
        assert_eq!(proxy.connections(), 3);
    }

    #[tokio::test]
    async fn reset_sends_rst_on_every_open_connection_and_keeps_accepting() {
        let proxy = CutProxy::start(echo_server().await).await.expect("proxy starts");
        let mut first = TcpStream::connect(proxy.addr()).await.expect("connect");
        let mut second = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut first, b"one").await.expect("relayed"), b"one");
        assert_eq!(round_trip(&mut second, b"two").await.expect("relayed"), b"two");

        proxy.reset();
        for stream in [&mut first, &mut second] {
            let mut buf = [0; 8];
            let read = timeout(MUST_COME, stream.read(&mut buf)).await.expect("the reset comes");
            assert_eq!(read.map_err(|e| e.kind()).err(), Some(ErrorKind::ConnectionReset), "not an RST");
        }

        let mut after = TcpStream::connect(proxy.addr()).await.expect("still accepting");
        assert_eq!(round_trip(&mut after, b"three").await.expect("relayed after the reset"), b"three");
        assert!(!proxy.is_cut());
    }

    /// Runs `f` on a thread of its own (the synchronous client); its result arrives on the receiver.
    fn background<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx
    }

    fn connect(url: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(url, postgres::NoTls)
    }

    fn select_one(client: &mut postgres::Client) -> Result<i32, postgres::Error> {
        client.query_one("SELECT 1", &[]).map(|row| row.get(0))
    }

    /// The same through a real PostgreSQL session: answers, none through a cut, a fresh session after the heal, an
    /// error after a reset.
    #[test]
    fn postgresql_sessions_through_a_cut_a_heal_and_a_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(pg) = PgServer::start(dir.path()).expect("PgServer starts") else { return };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let proxy = runtime.block_on(CutProxy::start(pg.addr())).expect("proxy starts");
        let url = format!("postgres://postgres@{}/postgres", proxy.addr());

        let mut before = connect(&url).expect("a session through the proxy");
        assert_eq!(select_one(&mut before).expect("an answer through the proxy"), 1);

        proxy.cut();
        let query = background(move || select_one(&mut before));
        let url2 = url.clone();
        let session = background(move || connect(&url2).map(drop));
        assert!(
            matches!(query.recv_timeout(NO_ANSWER), Err(mpsc::RecvTimeoutError::Timeout)),
            "a query was answered, or failed, through a cut"
        );
        assert!(
            matches!(session.recv_timeout(NO_ANSWER), Err(mpsc::RecvTimeoutError::Timeout)),
            "a session opened, or failed, through a cut"
        );

        proxy.heal();
        assert!(query.recv_timeout(MUST_COME).expect("the query ends").is_err(), "the cut session survived the heal");
        assert!(session.recv_timeout(MUST_COME).expect("the connect ends").is_err(), "the held connect succeeded");
        let mut after = connect(&url).expect("a new session after the heal");
        assert_eq!(select_one(&mut after).expect("an answer after the heal"), 1);

        proxy.reset();
        assert!(select_one(&mut after).is_err(), "a session answered after a reset");
        let mut again = connect(&url).expect("a new session after the reset");
        assert_eq!(select_one(&mut again).expect("an answer after the reset"), 1);
        assert_eq!(proxy.connections(), 4);
    }

    #[test]
    fn fates() {
        let calm = Control::default();
        let cut = Control { cut: true, cuts: 1, resets: 0 };
        let healed = Control { cut: false, cuts: 1, resets: 0 };
        assert_eq!(fate(calm, calm), Fate::Relay);
        assert_eq!(fate(calm, cut), Fate::Hold);
        assert_eq!(fate(calm, healed), Fate::Close, "a cut and a heal both missed still close");
        assert_eq!(fate(cut, cut), Fate::Hold);
        assert_eq!(fate(cut, healed), Fate::Close);
        assert_eq!(fate(healed, healed), Fate::Relay);
        assert_eq!(fate(calm, Control { resets: 1, ..calm }), Fate::Close);
        assert_eq!(fate(cut, Control { resets: 1, ..cut }), Fate::Close);
    }
}
