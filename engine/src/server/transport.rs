//! Sockets: listeners, connections, framing, and the bounds that keep a core's memory and
//! attention independent of what any client does.
//!
//! Each bound is answered with an error code or a closed connection, never a stall of other
//! clients or a crash (ARCHITECTURE.md has the table):
//! - **Frames**: longer than `max_frame_bytes` → FrameTooLarge, then close. A frame's bytes
//!   are charged to the core's request budget (`max_buffered_bytes_per_core`) when its header
//!   arrives, while the rest is still on the wire; a frame that does not fit is read and
//!   dropped and answered ServerBusy. The read buffer grows only as bytes arrive (to 1 MiB,
//!   then at most twice what came of a frame so far), so a header declaring 10 MB costs
//!   1 MiB until the megabytes come. A started frame must arrive whole within `frame_timeout_ms`.
//! - **Connections**: `max_connections_per_core` (TooManyConnections, then close); a
//!   connection with nothing in flight that says nothing for `idle_timeout_ms` is closed;
//!   TCP keepalive finds dead peers.
//! - **Per connection**: `max_inflight_per_connection` requests (ServerBusy), and
//!   `max_connection_bytes` of request bytes in flight plus responses not yet written: past
//!   it the connection's socket is not read (TCP pushes back on the client) and its reads
//!   return less or wait. A client that does not read its answers for
//!   `write_stall_timeout_ms` is disconnected. Request bytes are released when the response
//!   is produced, not when it is written, so a non-reading client cannot pin the core's
//!   request budget.
//! - **Long-polls** parked on a core: `max_parked_reads_per_core`; past it a long-poll
//!   answers at once (see `runtime`). A long-poll whose connection goes stops waiting.
//! - **TLS handshakes** (when a certificate is configured, every listener speaks TLS only):
//!   each runs in its connection's own task, never the accept loop, within
//!   `tls_handshake_timeout_ms`, and counts against `max_connections_per_core` while it
//!   runs; a failed one is closed and logged (debug, and a warning at most every 10 s per
//!   core). A peer that is not speaking TLS fails at its first byte.
//!
//! A connection's socket is a [`Socket`]: the TCP stream, or TLS over it (`tls`). Its
//! reader and writer tasks share it through one `RefCell`; every poll borrows it for its
//! own duration only. Socket options and shutdowns go to the TCP descriptor underneath.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};
use spate_protocol::{encode_error, peek_header, ErrorCode, ErrorResponse, FrameHeader};

use super::tls::{self, ServerTls, TlsSocket};
use crate::error::EngineError;
use crate::io::Storage;
use crate::notify::Notify;
use crate::runtime::Core;

/// How long a shutdown waits for in-flight requests before flushing anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits, after closing its side of every connection, for the clients
/// to close theirs (closing first with their bytes unread would reset the connection and
/// could destroy answers they have not read yet).
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// The read buffer's size between frames, and its smallest growth step.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// After a frame smaller than `READ_CHUNK_BYTES`, the room left behind it takes the next
/// read as it is if it holds this much, rather than a fresh buffer zeroed before its first
/// read (at 8,000 records/s of small puts that zeroing was 3 % of the engine core).
const READ_SPARE_MIN_BYTES: usize = 16 << 10;
/// A frame's buffer grows to this at once (or to the frame, if smaller), then doubles with
/// what arrives: a header declaring 10 MB costs 1 MiB until the megabytes come.
const FRAME_GROWTH_BYTES: usize = 1 << 20;
/// A read answer waits for this much room on its connection (or its `max_bytes`, if less);
/// only a stored batch larger than this can take an answer past the connection's bound.
const MIN_RESPONSE_ROOM: usize = 1 << 20;
/// A refused connection's TLS handshake (the refusal is a frame, which a TLS client reads
/// only after one) must complete within this, or it is closed without a word.
const REFUSE_HANDSHAKE: Duration = Duration::from_secs(1);
/// Failed TLS handshakes are logged at warn at most this often per core (each at debug).
const TLS_WARN_EVERY: Duration = Duration::from_secs(10);

/// A core's network state: listeners, topology and request accounting.
#[derive(Default)]
pub(crate) struct NetState {
    pub(crate) topology: RefCell<Vec<String>>,
    /// Where the metrics endpoint answers, for `Hello`.
    pub(crate) metrics_address: RefCell<Option<String>>,
    /// With their descriptors (glommio's listener does not lend its own).
    listeners: RefCell<Vec<(Rc<TcpListener>, std::os::fd::RawFd)>>,
    connections: Cell<usize>,
    /// Requests accepted and not yet answered on the socket (or dropped with it).
    inflight: Cell<usize>,
    /// Frame bytes charged to the request budget: in-flight requests and frames arriving.
    request_bytes: Cell<usize>,
    /// Responses produced and not yet written, over all connections.
    unsent_bytes: Cell<usize>,
    /// Long-polls waiting on this core's shards (maintained by `runtime`).
    pub(crate) parked_reads: Cell<usize>,
    pub(crate) idle: Notify,
    /// Woken when the core starts stopping (a subscription waiting for credit ends).
    pub(crate) stopping: Notify,
    /// Every open connection, for the timeout sweep (dead entries are dropped by it).
    watched: RefCell<Vec<std::rc::Weak<ConnState>>>,
    sweeping: Cell<bool>,
    /// Set at the end of a shutdown: every writer closes its side once it has written
    /// everything answered so far.
    closing: Cell<bool>,
    /// Woken when `closing` is set.
    close: Notify,
    /// Connections being refused (`spawn_reject`).
    rejecting: Cell<usize>,
    /// The TLS configuration every listener of this core speaks, if any (set by `listen`).
    tls: RefCell<Option<ServerTls>>,
    /// Failed TLS handshakes since the last warning, and when that was.
    tls_failures: Cell<u64>,
    tls_warned: Cell<Option<Instant>>,
}

/// A snapshot of one core's network accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    pub connections: usize,
    pub inflight_requests: usize,
    /// Request frame bytes held (in flight or arriving), the `max_buffered_bytes_per_core` budget.
    pub request_bytes: usize,
    /// Response bytes produced and not yet written.
    pub unsent_bytes: usize,
    pub parked_reads: usize,
}

impl NetState {
    pub(crate) fn stats(&self) -> NetStats {
        NetStats {
            connections: self.connections.get(),
            inflight_requests: self.inflight.get(),
            request_bytes: self.request_bytes.get(),
            unsent_bytes: self.unsent_bytes.get(),
            parked_reads: self.parked_reads.get(),
        }
    }

    fn charge(&self, bytes: usize) {
        self.request_bytes.set(self.request_bytes.get() + bytes);
    }

    fn release(&self, bytes: usize) {
        self.request_bytes.set(self.request_bytes.get() - bytes);
    }

    /// Charges a batch forwarded from another core to this core's request budget while it
    /// is held here (the guard returns it); `Busy` (nothing done) if the budget is full.
    pub(crate) fn charge_forwarded(
        &self,
        bytes: usize,
        budget: usize,
    ) -> Result<Charged<'_>, EngineError> {
        if self.request_bytes.get() + bytes > budget {
            return Err(EngineError::Busy(
                "the owning core holds too many request bytes".into(),
            ));
        }
        self.charge(bytes);
        Ok(Charged { net: self, bytes })
    }
}

/// Request bytes charged to a core's budget until dropped.
pub(crate) struct Charged<'a> {
    net: &'a NetState,
    bytes: usize,
}

impl Drop for Charged<'_> {
    fn drop(&mut self) {
        self.net.release(self.bytes);
    }
}

/// Binds a core's listeners and starts accepting on them.
pub(crate) fn listen<S: Storage + 'static>(
    core: Rc<Core<S>>,
    public: Option<SocketAddr>,
    own: SocketAddr,
) -> Result<(Option<SocketAddr>, SocketAddr), EngineError> {
    // This core's own rustls configuration (see `tls`): its handshakes share no lock with
    // another core's.
    *core.net.tls.borrow_mut() = ServerTls::load(&core.cfg)?;
    let reuse_port = public.is_some_and(|p| p.port() != 0);
    let public_listener = public
        .map(|p| bind_listener(p, reuse_port, "the listen address"))
        .transpose()?;
    let own_role = format!(
        "core {}'s own port, where shard-aware clients reach it: the listen port + 1 + {}",
        core.index, core.index
    );
    let own_listener = bind_listener(own, false, &own_role)?;
    let local = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| EngineError::Startup(format!("listener address: {e}")))
    };
    let addrs = (
        public_listener.as_ref().map(|l| local(&l.0)).transpose()?,
        local(&own_listener.0)?,
    );
    for (l, fd) in public_listener.into_iter().chain([own_listener]) {
        let l = Rc::new(l);
        core.net.listeners.borrow_mut().push((l.clone(), fd));
        glommio::spawn_local(accept_loop(core.clone(), l)).detach();
    }
    Ok(addrs)
}

/// The start of a shutdown: the listeners stop taking connections, so that a client
/// connecting from now on is refused (and knows nothing was sent) instead of being
/// accepted by a server about to exit.
pub(crate) fn stop_accepting<S: Storage + 'static>(core: &Core<S>) {
    for (_, fd) in core.net.listeners.borrow().iter() {
        // SAFETY: the descriptor belongs to a listener in the list, which keeps it open.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        // Wakes the accept loop with an error; it sees `stopping` and ends, closing it.
        let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
    }
}

/// Waits (bounded) until every request a core accepted, and every message it took from
/// another core, was answered: called at shutdown, after `stopping` is set so that no new
/// request is taken. Then the listeners close.
pub(crate) async fn drain_requests<S: Storage + 'static>(core: &Core<S>) {
    let net = &core.net;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while net.inflight.get() > 0 || core.handling.get() > 0 {
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(
                core = core.index,
                inflight = net.inflight.get(),
                forwarded = core.handling.get(),
                "drain timed out"
            );
            break;
        }
        let idle = async {
            net.idle.wait().await;
            true
        };
        let timeout = async {
            glommio::timer::sleep(deadline - now).await;
            false
        };
        futures_lite::future::or(idle, timeout).await;
    }
    net.listeners.borrow_mut().clear();
}

/// The end of a shutdown, once every request was answered and the stores are flushed: each
/// connection writes what it has left (ShuttingDown answers to requests that came late),
/// then closes its side, so a client reads every answer and then the end of the stream,
/// never a reset. Waits (bounded) for the clients to close theirs.
pub(crate) async fn close_connections<S: Storage + 'static>(core: &Core<S>) {
    let net = &core.net;
    net.closing.set(true);
    net.close.notify_all();
    let deadline = Instant::now() + CLOSE_GRACE;
    while net.connections.get() > 0 {
        let now = Instant::now();
        if now >= deadline {
            tracing::debug!(
                core = core.index,
                connections = net.connections.get(),
                "clients did not close their connections"
            );
            return;
        }
        let idle = net.idle.wait();
        let timeout = glommio::timer::sleep(deadline - now);
        futures_lite::future::or(idle, async {
            timeout.await;
        })
        .await;
    }
}

/// A listening socket, with SO_REUSEPORT only when asked (glommio's own `bind` always sets
/// it, which is wrong for ephemeral ports).
fn bind_listener(
    addr: SocketAddr,
    reuse_port: bool,
    role: &str,
) -> Result<(TcpListener, std::os::fd::RawFd), EngineError> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fail =
        |e: io::Error| EngineError::Startup(format!("cannot listen on {addr} ({role}): {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(reuse_port).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    // SAFETY: the descriptor is a bound, listening TCP socket we own and hand over.
    let fd = socket.into_raw_fd();
    Ok((unsafe { TcpListener::from_raw_fd(fd) }, fd))
}

async fn accept_loop<S: Storage + 'static>(core: Rc<Core<S>>, listener: Rc<TcpListener>) {
    // Accept failures (out of descriptors, most likely) are logged once per 10 s.
    let mut last_warning: Option<Instant> = None;
    let mut failures = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if core.stopping.get() {
                    return;
                }
                failures += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(core = core.index, error = %e, failures, "accept failed");
                    last_warning = Some(Instant::now());
                    failures = 0;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if core.stopping.get() {
            spawn_reject(
                &core,
                stream,
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            );
            continue;
        }
        if core.net.connections.get() >= core.cfg.max_connections_per_core {
            spawn_reject(
                &core,
                stream,
                ErrorCode::TooManyConnections,
                "too many connections on this core",
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        if core.cfg.keepalive_ms > 0 {
            let idle = Duration::from_millis(core.cfg.keepalive_ms);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval((idle / 6).max(Duration::from_secs(1)));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        }
        core.net.connections.set(core.net.connections.get() + 1);
        let c = core.clone();
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().ok();
            if let Some((socket, identity)) = open(&c, stream, peer).await {
                Connection::serve(c.clone(), socket, peer, identity).await;
            }
            c.net.connections.set(c.net.connections.get() - 1);
            c.net.idle.notify_all();
        })
        .detach();
    }
}

/// A new connection's socket and, under mutual TLS, the identity its client proved: the
/// stream itself, or TLS over it once the handshake succeeded (within
/// `tls_handshake_timeout_ms`; given up if the core starts stopping meanwhile). `None`:
/// the connection is closed (a failed handshake, or refused because the core stopped).
async fn open<S: Storage + 'static>(
    core: &Rc<Core<S>>,
    stream: TcpStream,
    peer: Option<SocketAddr>,
) -> Option<(Socket, Option<String>)> {
    let Some(tls) = core.net.tls.borrow().clone() else {
        return Some((Socket::Plain(stream), None));
    };
    if core.stopping.get() {
        return None;
    }
    let timeout = Duration::from_millis(core.cfg.tls_handshake_timeout_ms);
    let handshake = async { Some(tls.accept(stream, timeout).await) };
    let stopping = async {
        core.net.stopping.wait().await;
        None
    };
    let socket = match futures_lite::future::or(handshake, stopping).await? {
        Ok(socket) => socket,
        Err(e) => {
            handshake_failed(core, peer, &e);
            return None;
        }
    };
    let identity = tls::client_identity(socket.get_ref().1);
    let socket = Socket::Tls(Box::new(socket));
    if core.stopping.get() {
        // The shutdown began during the handshake: refused as a new connection would be.
        refuse(
            socket,
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        )
        .await;
        return None;
    }
    Some((socket, identity))
}

/// Logs a failed TLS handshake: each at debug, and a warning (with how many failed since
/// the last one) at most every `TLS_WARN_EVERY` per core, so a scanner or a misconfigured
/// fleet cannot flood the log.
fn handshake_failed<S: Storage + 'static>(core: &Core<S>, peer: Option<SocketAddr>, e: &io::Error) {
    tracing::debug!(core = core.index, peer = %super::Peer(peer), error = %e, "TLS handshake failed");
    let net = &core.net;
    let failures = net.tls_failures.get() + 1;
    net.tls_failures.set(failures);
    if net
        .tls_warned
        .get()
        .is_none_or(|t| t.elapsed() >= TLS_WARN_EVERY)
    {
        tracing::warn!(core = core.index, peer = %super::Peer(peer), error = %e, failures, "TLS handshake failed");
        net.tls_warned.set(Some(Instant::now()));
        net.tls_failures.set(0);
    }
}

/// Most connections being refused at once per core; past it one is closed without a word.
const MAX_REJECTING: usize = 64;

/// Refuses a connection in a task of its own, so that a peer slow to close never holds up
/// the accept loop. Over TLS the refusal follows a handshake (bounded by
/// `REFUSE_HANDSHAKE`), since a TLS client reads nothing before one.
fn spawn_reject<S: Storage + 'static>(
    core: &Rc<Core<S>>,
    stream: TcpStream,
    code: ErrorCode,
    message: &'static str,
) {
    let net = &core.net;
    if net.rejecting.get() >= MAX_REJECTING {
        drop(stream);
        return;
    }
    net.rejecting.set(net.rejecting.get() + 1);
    let c = core.clone();
    glommio::spawn_local(async move {
        let tls = c.net.tls.borrow().clone();
        let socket = match tls {
            None => Some(Socket::Plain(stream)),
            Some(tls) => tls
                .accept(stream, REFUSE_HANDSHAKE)
                .await
                .ok()
                .map(|s| Socket::Tls(Box::new(s))),
        };
        if let Some(socket) = socket {
            refuse(socket, code, message).await;
        }
        c.net.rejecting.set(c.net.rejecting.get() - 1);
    })
    .detach();
}

/// Answers a connection's only frame (correlation id 0, `code`) and closes it.
async fn refuse(mut socket: Socket, code: ErrorCode, message: &str) {
    let mut out = Vec::new();
    encode_error(
        &mut out,
        0,
        0,
        &ErrorResponse {
            code,
            retry_after_ms: 100,
            message,
            shard_map_version: 0,
        },
    );
    let write = async {
        if socket.write_all(&out).await.is_ok() {
            // Over TLS, the last record may still sit in rustls: the close sends it.
            let _ = socket.close().await;
        }
    };
    // A peer that does not take even this answer does not hold the accept loop.
    let give_up = glommio::timer::sleep(Duration::from_millis(100));
    futures_lite::future::or(write, give_up).await;
    // Close this side, then wait (briefly) for the peer's end: closing with its request
    // unread would reset the connection, and the peer might never read the answer.
    let _ = socket.sock_ref().shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let give_up = glommio::timer::sleep(Duration::from_millis(100));
    futures_lite::future::or(drain, give_up).await;
}

/// A connection's socket: TCP, or TLS over TCP once its handshake is done.
pub(crate) enum Socket {
    Plain(TcpStream),
    Tls(Box<TlsSocket>),
}

impl Socket {
    /// The TCP socket underneath, for options and shutdowns (a shutdown under TLS is
    /// abrupt, sending no close_notify, as a dropped connection's should be).
    fn sock_ref(&self) -> socket2::SockRef<'_> {
        match self {
            Socket::Plain(s) => socket2::SockRef::from(s),
            Socket::Tls(t) => socket2::SockRef::from(t.get_ref().0.tcp()),
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Socket::Tls(_))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(t) => tls::poll_read_tls(t, cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_close(cx),
            Socket::Tls(t) => Pin::new(&mut **t).poll_close(cx),
        }
    }
}

/// The read loop's buffer: a `BytesMut` whose spare room is zeroed once, not before every
/// read. A read needs initialized bytes, and zero-filling the whole window (up to 1 MiB for
/// a large frame) before each read that then returned tens of KiB was 15 % of the engine
/// core at 1 GB/s of puts (perf; BENCHMARKS.md "Storage v2 under load").
struct RecvBuf {
    buf: BytesMut,
    /// Bytes from the start of `buf` known to be initialized: its length, plus what earlier
    /// windows zeroed or received past it (never less than `buf.len()`).
    init: usize,
}

impl std::ops::Deref for RecvBuf {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl RecvBuf {
    fn with_capacity(bytes: usize) -> RecvBuf {
        RecvBuf {
            buf: BytesMut::with_capacity(bytes),
            init: 0,
        }
    }

    /// The first `n` bytes, split off without copying.
    fn split_to(&mut self, n: usize) -> BytesMut {
        let front = self.buf.split_to(n);
        self.init -= n;
        front
    }

    /// Grows the buffer by `want` initialized bytes and answers them, to read into.
    fn window(&mut self, want: usize) -> &mut [u8] {
        let start = self.buf.len();
        let end = start + want;
        if self.buf.capacity() < end {
            self.buf.reserve(want);
            // A new allocation, or the old one reclaimed with its bytes moved to the front:
            // nothing past the length is known initialized any more.
            self.init = start;
        }
        if self.init < end {
            // SAFETY: bytes `start..init` of this allocation were initialized by an earlier
            // window (zeros, or received bytes later truncated away) and nothing has
            // de-initialized them: `truncate` and `split_to` leave the spare room's memory as
            // it is, and a reallocation reset `init` above. `init <= capacity` holds since
            // `init` only grows to an `end` that fitted the capacity.
            unsafe { self.buf.set_len(self.init) };
            self.buf.resize(end, 0);
            self.init = end;
        } else {
            // SAFETY: as above, `start..end` lies below `init`, all initialized.
            unsafe { self.buf.set_len(end) };
        }
        &mut self.buf[start..]
    }

    fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// Room past the length that a window can take without a new allocation.
    fn spare(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }
}

/// The two halves of a socket used by one task each. Both live on one thread and each poll
/// borrows the socket only for its own duration, so the halves never overlap.
struct Half(Rc<RefCell<Socket>>);

impl Half {
    /// Reads what arrived, waiting for at least a byte (or the end). A TLS read yields one
    /// record (16 KiB at most), so over TLS whatever else is ready is read too, without
    /// waiting: a large frame then takes as few turns of the reader's loop (each sizing the
    /// buffer) as in plaintext.
    async fn read_some(&mut self, tls: bool, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = self.read(buf).await?;
        if !tls || n == 0 {
            return Ok(n);
        }
        while n < buf.len() {
            match futures_lite::future::poll_once(self.read(&mut buf[n..])).await {
                Some(Ok(more)) if more > 0 => n += more,
                // Nothing more for now, the end or an error: the next read meets them.
                _ => break,
            }
        }
        Ok(n)
    }
}

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// What the request handlers see of their connection: how much room it has for responses,
/// and whether its peer is gone (a long-poll for a vanished client stops waiting).
pub(crate) struct ConnState {
    socket: Rc<RefCell<Socket>>,
    peer: Option<SocketAddr>,
    /// Under mutual TLS, who the client proved to be with its certificate: the subject's
    /// common name (or `sha256:` and the certificate's fingerprint when it has none).
    client_identity: Option<String>,
    /// Requests of this connection not yet answered on the socket.
    inflight: Cell<usize>,
    /// When bytes last arrived.
    last_read: Cell<Instant>,
    /// When the frame (or header) now being received started to arrive.
    frame_since: Cell<Option<Instant>>,
    /// When the writer last made progress on answers it is still writing.
    write_since: Cell<Option<Instant>>,
    /// Request bytes of this connection's in-flight requests plus its unsent responses.
    held: Cell<usize>,
    max_held: usize,
    /// Woken when `held` goes down or the connection is gone.
    room: Notify,
    /// The socket failed, stalled or was reset: nothing more will be written to it.
    gone: Cell<bool>,
    /// The client closed its side (or the reader stopped): long-polls stop waiting.
    hung_up: Cell<bool>,
    /// Responses waiting to be written.
    outbox: Outbox,
    /// This connection's subscriptions, by the correlation id of their subscribe request:
    /// the credit their client has granted.
    pub(crate) subscriptions: RefCell<std::collections::HashMap<u64, Rc<SubscriptionCredit>>>,
    /// Who the connection is authenticated as, its challenge under way, and the policy
    /// decisions it has cached.
    pub(crate) security: RefCell<super::handlers::ConnSecurity>,
}

/// Bytes a subscriber has granted and not yet been sent (negative: an event passed it by part
/// of a batch, which the next grants repay); woken when it grants more.
#[derive(Default)]
pub(crate) struct SubscriptionCredit {
    pub(crate) bytes: Cell<i64>,
    pub(crate) granted: Notify,
}

impl ConnState {
    /// The client's address, for logs.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Who the client proved to be with its TLS certificate (mutual TLS), if it did.
    pub(crate) fn client_identity(&self) -> Option<&str> {
        self.client_identity.as_deref()
    }

    /// Waits until the connection has room for a response of up to `want` bytes (at least
    /// `min(want, MIN_RESPONSE_ROOM)`) and holds that room until the returned guard drops;
    /// `None` once the connection is gone.
    pub(crate) async fn reserve(&self, want: usize) -> Option<Reservation<'_>> {
        let need = want.min(MIN_RESPONSE_ROOM);
        loop {
            if self.gone.get() {
                return None;
            }
            let room = self.max_held.saturating_sub(self.held.get());
            if room >= need.max(1) {
                let bytes = want.min(room);
                self.add(bytes);
                return Some(Reservation { conn: self, bytes });
            }
            self.room.wait().await;
        }
    }

    /// Resolves when the client hung up or the connection is gone.
    pub(crate) async fn closed(&self) {
        while !self.gone.get() && !self.hung_up.get() {
            self.room.wait().await;
        }
    }

    fn add(&self, bytes: usize) {
        self.held.set(self.held.get() + bytes);
    }

    fn sub(&self, bytes: usize) {
        self.held.set(self.held.get() - bytes);
        self.room.notify_all();
    }

    /// Appends response bytes answering `answers` in-flight requests to the outbox.
    fn queue(&self, net: &NetState, bytes: &[u8], answers: usize) {
        self.outbox.buf.borrow_mut().extend_from_slice(bytes);
        self.outbox.answers.set(self.outbox.answers.get() + answers);
        self.add(bytes.len());
        net.unsent_bytes.set(net.unsent_bytes.get() + bytes.len());
        self.outbox.ready.notify_all();
    }

    /// Queues one event of a request answered many times (a subscription): it answers
    /// nothing yet, the request stays in flight.
    pub(crate) fn push(&self, net: &NetState, bytes: &[u8]) {
        self.queue(net, bytes, 0);
    }
}

/// Room held on a connection for a response being produced.
pub(crate) struct Reservation<'a> {
    conn: &'a ConnState,
    bytes: usize,
}

impl Reservation<'_> {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.conn.sub(self.bytes);
    }
}

/// Responses waiting to be written, and how many requests they answer.
#[derive(Default)]
struct Outbox {
    buf: RefCell<Vec<u8>>,
    /// Requests whose responses sit in `buf`.
    answers: Cell<usize>,
    ready: Notify,
    /// The reader stopped: the writer ends once every in-flight request is answered.
    closed: Cell<bool>,
}

struct Connection<S: Storage> {
    core: Rc<Core<S>>,
    state: Rc<ConnState>,
}

/// How the reader stands with the frame at the front of its buffer.
enum Frame {
    /// Nothing started.
    None,
    /// A frame's header arrived; its bytes are charged to the budget.
    Charged { header: FrameHeader, since: Instant },
    /// A frame the budget could not take: its bytes are dropped as they come, then it is
    /// answered ServerBusy.
    Dropping {
        header: FrameHeader,
        left: usize,
        since: Instant,
    },
}

impl<S: Storage + 'static> Connection<S> {
    async fn serve(
        core: Rc<Core<S>>,
        socket: Socket,
        peer: Option<SocketAddr>,
        client_identity: Option<String>,
    ) {
        let max_held = core.cfg.max_connection_bytes;
        let state = Rc::new(ConnState {
            socket: Rc::new(RefCell::new(socket)),
            peer,
            client_identity,
            inflight: Cell::new(0),
            last_read: Cell::new(Instant::now()),
            frame_since: Cell::new(None),
            write_since: Cell::new(None),
            held: Cell::new(0),
            max_held,
            room: Notify::new(),
            gone: Cell::new(false),
            hung_up: Cell::new(false),
            outbox: Outbox::default(),
            subscriptions: RefCell::new(Default::default()),
            security: RefCell::new(Default::default()),
        });
        watch(&core, &state);
        let conn = Rc::new(Connection { core, state });
        let writer = glommio::spawn_local(conn.clone().write_loop());
        let mut frame = Frame::None;
        match conn.read_loop(&mut frame).await {
            Ok(()) => {}
            Err(e) => tracing::debug!(
                peer = %super::Peer(conn.state.peer),
                identity = ?conn.state.client_identity(),
                error = %e,
                "connection closed"
            ),
        }
        if let Frame::Charged { header, .. } = frame {
            conn.core.net.release(header.frame_len as usize);
            conn.state.sub(header.frame_len as usize);
        }
        conn.state.hung_up.set(true);
        conn.state.room.notify_all();
        // Let the writer send what the in-flight requests answer, then stop.
        conn.state.outbox.closed.set(true);
        conn.state.outbox.ready.notify_all();
        writer.await;
    }

    /// Reads frames and dispatches each as its own task, until EOF, a framing error or a
    /// timeout. `frame` is the frame being received (its charge is returned by the caller).
    async fn read_loop(self: &Rc<Self>, frame: &mut Frame) -> io::Result<()> {
        let core = self.core.clone();
        let cfg = &core.cfg;
        let max_frame = cfg.max_frame_bytes;
        let mut reader = Half(self.state.socket.clone());
        let tls = self.state.socket.borrow().is_tls();
        let mut buf = RecvBuf::with_capacity(READ_CHUNK_BYTES);
        // The last frame dispatched was smaller than a read chunk.
        let mut after_small = false;
        loop {
            // Frames in the buffer: dispatch the complete ones, charge the started one.
            loop {
                match frame {
                    Frame::Dropping { header, left, .. } => {
                        let n = (*left).min(buf.len());
                        let _ = buf.split_to(n);
                        *left -= n;
                        if *left > 0 {
                            break;
                        }
                        let h = *header;
                        *frame = Frame::None;
                        self.state.frame_since.set(None);
                        self.respond_now(
                            h.opcode,
                            h.correlation_id,
                            ErrorCode::ServerBusy,
                            "the core holds too many request bytes",
                        );
                    }
                    Frame::None => match peek_header(&buf, max_frame) {
                        Ok(None) => break,
                        Ok(Some(header)) => {
                            let len = header.frame_len as usize;
                            let since = Instant::now();
                            let net = &core.net;
                            if net.request_bytes.get() + len > cfg.max_buffered_bytes_per_core {
                                *frame = Frame::Dropping {
                                    header,
                                    left: len,
                                    since,
                                };
                            } else {
                                net.charge(len);
                                self.state.add(len);
                                *frame = Frame::Charged { header, since };
                            }
                        }
                        Err(e) => return self.framing_error(e),
                    },
                    Frame::Charged { header, .. } => {
                        let len = header.frame_len as usize;
                        if buf.len() < len {
                            break;
                        }
                        let h = *header;
                        *frame = Frame::None;
                        self.state.frame_since.set(None);
                        // Validate the whole frame before a task relies on it.
                        if let Err(e) = spate_protocol::decode_frame(&buf[..len], max_frame) {
                            core.net.release(len);
                            self.state.sub(len);
                            return self.framing_error(e);
                        }
                        // Owned and refcounted, no copy: the request task keeps it alive.
                        let bytes = buf.split_to(len).freeze();
                        after_small = len < READ_CHUNK_BYTES;
                        self.dispatch(h, bytes);
                    }
                }
            }
            // Responses the client has not read: stop reading until it does.
            while self.state.held.get() >= self.state.max_held {
                if self.state.gone.get() {
                    return Ok(());
                }
                self.state.room.wait().await;
            }
            // Read at least a chunk; the rest of a frame up to 1 MiB at once (one read: reading
            // a 300 KiB put in 64 KiB steps cost 12 % of small-record put throughput), of a
            // larger one at most as much again as arrived.
            let start = buf.len();
            let want = match frame {
                Frame::Charged { header, .. } => (header.frame_len as usize - start)
                    .min(start.max(FRAME_GROWTH_BYTES))
                    .max(READ_CHUNK_BYTES),
                _ => READ_CHUNK_BYTES,
            };
            // Small frames share a buffer: after one, the next is read into the room left
            // behind it (a frame's `Bytes` keeps its buffer alive until its request is
            // answered, so a fresh buffer per frame was allocated and zeroed each time). After
            // a large frame the buffer is sized as above: reading large frames' headers into
            // such leftovers cost `max-1k`'s shape a few per cent (BENCHMARKS.md, session n).
            let want = match frame {
                Frame::None if after_small && buf.spare() >= READ_SPARE_MIN_BYTES => {
                    want.min(buf.spare())
                }
                _ => want,
            };
            // The sweep (`sweep_connections`) closes the connection if the frame under way
            // takes too long, or if nothing arrives while nothing is in flight.
            let since = match frame {
                Frame::Charged { since, .. } | Frame::Dropping { since, .. } => Some(*since),
                Frame::None if start > 0 => {
                    Some(self.state.frame_since.get().unwrap_or_else(Instant::now))
                }
                Frame::None => None,
            };
            self.state.frame_since.set(since);
            let n = reader.read_some(tls, buf.window(want)).await?;
            buf.truncate(start + n);
            if n == 0 {
                return Ok(());
            }
            self.state.last_read.set(Instant::now());
        }
    }

    /// The stream is out of step: answer once and close this connection.
    fn framing_error(&self, e: spate_protocol::frame::FrameError) -> io::Result<()> {
        let code = ErrorCode::from(e.clone());
        self.respond_now(0, 0, code, &e.to_string());
        Ok(())
    }

    /// Answers a request at once (bounds, shutdown, framing errors).
    fn respond_now(&self, opcode: u16, correlation_id: u64, code: ErrorCode, message: &str) {
        let mut out = Vec::new();
        let retry_after_ms = if code.is_retryable() { 10 } else { 0 };
        encode_error(
            &mut out,
            opcode,
            correlation_id,
            &ErrorResponse {
                code,
                retry_after_ms,
                message,
                shard_map_version: 0,
            },
        );
        self.queue(&out, 0);
    }

    /// Appends response bytes answering `answers` in-flight requests to the outbox.
    fn queue(&self, bytes: &[u8], answers: usize) {
        self.state.queue(&self.core.net, bytes, answers);
    }

    /// Runs one complete, charged frame as its own task.
    fn dispatch(self: &Rc<Self>, header: FrameHeader, frame: bytes::Bytes) {
        let core = &self.core;
        let (opcode, cid) = (header.opcode, header.correlation_id);
        let refuse = if core.stopping.get() {
            Some((ErrorCode::ShuttingDown, "the server is shutting down"))
        } else if self.state.inflight.get() >= core.cfg.max_inflight_per_connection {
            Some((
                ErrorCode::ServerBusy,
                "too many requests in flight on this connection",
            ))
        } else {
            None
        };
        if let Some((code, message)) = refuse {
            core.net.release(frame.len());
            self.state.sub(frame.len());
            return self.respond_now(opcode, cid, code, message);
        }
        let net = &core.net;
        net.inflight.set(net.inflight.get() + 1);
        self.state.inflight.set(self.state.inflight.get() + 1);
        let conn = self.clone();
        glommio::spawn_local(async move {
            let mut out = Vec::new();
            super::handlers::handle(&conn.core, &conn.state, &frame, &mut out).await;
            // The request's bytes go back to the budget now, written or not.
            conn.core.net.release(frame.len());
            conn.state.sub(frame.len());
            drop(frame);
            conn.queue(&out, 1);
        })
        .detach();
    }

    async fn write_loop(self: Rc<Self>) {
        let mut sending = Vec::new();
        // This side is closed (shutdown): what is answered after is not written.
        let mut finished = false;
        loop {
            std::mem::swap(&mut sending, &mut *self.state.outbox.buf.borrow_mut());
            let answers = self.state.outbox.answers.replace(0);
            if !sending.is_empty() && !self.state.gone.get() && !finished {
                if let Err(e) = self.write_all(&sending).await {
                    tracing::debug!(peer = %super::Peer(self.state.peer), error = %e, "connection dropped");
                    self.state.drop_connection();
                }
            }
            let net = &self.core.net;
            net.unsent_bytes.set(net.unsent_bytes.get() - sending.len());
            self.state.sub(sending.len());
            sending.clear();
            if answers > 0 {
                self.state.inflight.set(self.state.inflight.get() - answers);
                net.inflight.set(net.inflight.get() - answers);
                if net.inflight.get() == 0 {
                    net.idle.notify_all();
                }
            }
            let idle =
                self.state.outbox.buf.borrow().is_empty() && self.state.outbox.answers.get() == 0;
            if idle {
                if self.state.outbox.closed.get() && self.state.inflight.get() == 0 {
                    if !self.state.gone.get() && !finished {
                        self.close_write().await;
                    }
                    return;
                }
                let net = &self.core.net;
                if net.closing.get() && !finished && self.state.inflight.get() == 0 {
                    // Everything answered is written. A last frame says why the connection
                    // ends (correlation id 0, ShuttingDown): whatever the client still
                    // waits for was not applied (nothing is, once the shutdown began), so
                    // it may send it again to the server once it is back. Then the end.
                    finished = true;
                    if !self.state.gone.get() {
                        let mut goodbye = Vec::new();
                        encode_error(
                            &mut goodbye,
                            0,
                            0,
                            &ErrorResponse {
                                code: ErrorCode::ShuttingDown,
                                retry_after_ms: 100,
                                message: "the server is shutting down",
                                shard_map_version: 0,
                            },
                        );
                        let _ = self.write_all(&goodbye).await;
                    }
                    self.close_write().await;
                    continue;
                }
                futures_lite::future::or(self.state.outbox.ready.wait(), net.close.wait()).await;
            }
        }
    }

    /// Writes all of `bytes`, noting progress for the sweep (which drops a connection whose
    /// peer takes nothing for `write_stall_timeout_ms`). Over TLS it also flushes: rustls
    /// takes plaintext before the socket takes its records.
    async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut w = Half(self.state.socket.clone());
        let mut pos = 0;
        let written = async {
            while pos < bytes.len() {
                self.state.write_since.set(Some(Instant::now()));
                match w.write(&bytes[pos..]).await? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => pos += n,
                }
            }
            self.state.write_since.set(Some(Instant::now()));
            w.flush().await
        }
        .await;
        self.state.write_since.set(None);
        written
    }

    /// Closes this side: a TLS close_notify first (which waits for room like any write, so
    /// the sweep watches it), then the TCP write side.
    async fn close_write(&self) {
        self.state.write_since.set(Some(Instant::now()));
        let _ = Half(self.state.socket.clone()).close().await;
        self.state.write_since.set(None);
        let _ = self
            .state
            .socket
            .borrow()
            .sock_ref()
            .shutdown(std::net::Shutdown::Write);
    }
}

impl ConnState {
    /// The peer failed or stalled: shut the socket (the reader sees EOF at once), and let
    /// in-flight requests finish into the void.
    fn drop_connection(&self) {
        self.gone.set(true);
        self.room.notify_all();
        self.shutdown();
    }

    fn shutdown(&self) {
        let _ = self
            .socket
            .borrow()
            .sock_ref()
            .shutdown(std::net::Shutdown::Both);
    }
}

/// Registers a connection for the timeout sweep, starting the core's sweeper if needed.
fn watch<S: Storage + 'static>(core: &Rc<Core<S>>, state: &Rc<ConnState>) {
    let net = &core.net;
    net.watched.borrow_mut().push(Rc::downgrade(state));
    if !net.sweeping.replace(true) {
        glommio::spawn_local(sweep_connections(core.clone())).detach();
    }
}

/// Closes connections past their time limits: a frame under way for `frame_timeout_ms`, a
/// peer that read nothing of its answers for `write_stall_timeout_ms`, nothing in flight
/// and nothing said for `idle_timeout_ms`. One timer per core, not one per read: a timer
/// raced against every socket read and write cost 12 % of small-record put throughput.
async fn sweep_connections<S: Storage + 'static>(core: Rc<Core<S>>) {
    let cfg = &core.cfg;
    let frame = Duration::from_millis(cfg.frame_timeout_ms);
    let stall = Duration::from_millis(cfg.write_stall_timeout_ms);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let every =
        (frame.min(stall).min(idle) / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        glommio::timer::sleep(every).await;
        if core.stopping.get() {
            core.net.sweeping.set(false);
            return;
        }
        let now = Instant::now();
        let mut watched = core.net.watched.borrow_mut();
        watched.retain(|w| {
            let Some(c) = w.upgrade() else {
                return false;
            };
            let past = |t: Option<Instant>, limit: Duration| {
                t.is_some_and(|t| now.saturating_duration_since(t) >= limit)
            };
            if past(c.write_since.get(), stall) {
                tracing::debug!(peer = %super::Peer(c.peer), "the peer reads none of its answers: dropped");
                c.drop_connection();
                return false;
            }
            if past(c.frame_since.get(), frame) {
                tracing::debug!(peer = %super::Peer(c.peer), "a started frame did not arrive in time");
                c.shutdown();
                return false;
            }
            let quiet = c.inflight.get() == 0 && c.held.get() == 0 && c.frame_since.get().is_none();
            if quiet && past(Some(c.last_read.get()), idle) {
                tracing::debug!(peer = %super::Peer(c.peer), "idle connection closed");
                c.shutdown();
                return false;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::RecvBuf;

    /// The buffer against a plain `Vec` model, through reads shorter than their window,
    /// frames split off (kept alive, as request tasks do, and dropped) and reallocations.
    #[test]
    fn recv_buf_keeps_every_received_byte_and_hands_out_initialized_windows() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut buf = RecvBuf::with_capacity(64);
        let mut model: Vec<u8> = Vec::new();
        let mut held = Vec::new();
        let mut byte = 0u8;
        for _ in 0..20_000 {
            match next(3) {
                0 | 1 => {
                    // Sometimes just the room left, as the read loop asks after a small frame.
                    let want = match (next(4), buf.spare()) {
                        (0, spare) if spare > 0 => spare.min(1 + next(5000) as usize),
                        _ => 1 + next(5000) as usize,
                    };
                    let start = buf.len();
                    let window = buf.window(want);
                    assert_eq!(window.len(), want);
                    let n = next(want as u64 + 1) as usize;
                    for b in &mut window[..n] {
                        byte = byte.wrapping_add(1);
                        *b = byte;
                        model.push(byte);
                    }
                    buf.truncate(start + n);
                }
                _ => {
                    let n = next(buf.len() as u64 + 1) as usize;
                    let front = buf.split_to(n);
                    assert_eq!(&front[..], &model[..n]);
                    model.drain(..n);
                    if next(2) == 0 {
                        held.push(front);
                    }
                    if held.len() > 8 {
                        held.clear();
                    }
                }
            }
            assert_eq!(&buf[..], &model[..]);
            assert!(buf.init >= buf.len() && buf.init <= buf.buf.capacity());
        }
    }
}
