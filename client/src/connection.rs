//! One pipelined connection to one server address.
//!
//! A connection owns two tasks. The writer task takes the encoded requests queued (a bounded
//! queue) and writes them in one vectored write through a buffered writer, flushing when
//! the queue runs dry, so a burst of small requests leaves in a few syscalls and a batch is
//! not copied on its way. The reader task decodes
//! response frames and hands each one, by correlation id, to the request waiting for it;
//! responses may arrive in any order.
//!
//! Bounds: at most `max_in_flight` requests are outstanding (a semaphore; a caller past it
//! waits for a slot), so the waiter map and the writer queue are bounded by it too. A
//! response frame is at most `DEFAULT_MAX_FRAME_BYTES`.
//!
//! Failure: the first I/O error, end of stream or undecodable frame closes the connection
//! for good: every waiting request fails with [`ClientError::ConnectionLost`] (retryable,
//! the request may have been applied), and so does every later one. The [`crate::Client`]
//! sees [`Connection::is_closed`] and opens a new connection for the next request.
//!
//! Copies: a request's head is encoded into its own small buffer and its batch (if any) is
//! written from the caller's `Bytes` without being copied into the head. A response frame is
//! split off the receive buffer without a copy (`BytesMut::split_to`), and the records a
//! caller gets borrow from it.
//!
//! TLS: with [`Tls`] the handshake (tokio-rustls) runs in [`Connection::open`] within the
//! connect timeout, and the two tasks share the TLS stream through `tokio::io::split`
//! (plaintext keeps the socket's own lock-free halves). A failed handshake is a
//! [`ClientError::Connect`]; so is a TLS 1.3 server's refusal of the client's certificate,
//! which arrives only after the client's side of the handshake has finished, as the alert
//! that is the connection's first answer.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use spate_protocol::{
    decode_frame, decode_response, peek_header, ErrorCode, Opcode, Response,
    DEFAULT_MAX_FRAME_BYTES,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::client::TlsOptions;
use crate::error::{ClientError, Result};

/// Default bound on outstanding requests per connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Size of the writer's buffer: small requests are coalesced up to this many bytes.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Smallest free space the reader asks the socket to fill.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Heads and batches the writer takes from its queue for one burst (one flush), past its
/// first request: a vectored write takes at most 1,024 (`IOV_MAX`) and every call looks at
/// what is left of the burst.
const BURST_PARTS_MAX: usize = 1024;

type Waiter = oneshot::Sender<Result<Bytes>>;
/// A request answered many times (a subscription): every frame goes down the channel; the
/// last one (not flagged MORE), or the connection's failure, ends it.
type StreamWaiter = mpsc::UnboundedSender<Result<Bytes>>;

/// The requests waiting for a response, and why the connection closed once it has.
struct Waiters {
    by_id: HashMap<u64, Waiter>,
    streams: HashMap<u64, StreamWaiter>,
    closed: Option<ClientError>,
}

struct Shared {
    addr: String,
    waiters: Mutex<Waiters>,
    /// The server answered ShuttingDown here: answers still come, but the next request goes
    /// on a new connection (to the server once it is back).
    draining: std::sync::atomic::AtomicBool,
    /// Whether the server has answered anything yet: a failure before that means it never
    /// took this connection (a refused TLS handshake, a plaintext server).
    answered: std::sync::atomic::AtomicBool,
    /// Notified (once, with a stored permit) when the connection closed.
    closed: tokio::sync::Notify,
}

impl Shared {
    /// Closes the connection: fails every waiting request and every later one with `err`.
    /// Only the first reason is kept.
    fn fail(&self, err: ClientError) {
        let (drained, streams): (Vec<Waiter>, Vec<StreamWaiter>) = {
            let mut w = self.waiters.lock().expect("waiters lock");
            if w.closed.is_none() {
                tracing::debug!(addr = %self.addr, error = %err, "connection closed");
                w.closed = Some(err.clone());
                self.closed.notify_one();
            }
            (
                w.by_id.drain().map(|(_, tx)| tx).collect(),
                w.streams.drain().map(|(_, tx)| tx).collect(),
            )
        };
        for tx in drained {
            let _ = tx.send(Err(err.clone()));
        }
        for tx in streams {
            let _ = tx.send(Err(err.clone()));
        }
    }

    fn lost(&self, reason: impl Into<String>) -> ClientError {
        ClientError::ConnectionLost {
            addr: self.addr.clone(),
            reason: reason.into(),
        }
    }
}

/// TLS for a client's connections: the rustls configuration (its files read once, when the
/// client connects) and the name every connection's certificate must carry.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    /// TLS to the server reached at `bootstrap`, and to each of its cores.
    pub(crate) fn new(options: &TlsOptions, bootstrap: &str) -> Result<Tls> {
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(options.client_config()?),
            server_name: options.server_name_for(bootstrap)?,
        })
    }
}

/// The rustls error inside an I/O error, if it is one.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Why a handshake failed, in rustls' words, with a hint where the likely cause is a server
/// that does not speak TLS.
fn handshake_failure(e: &io::Error) -> String {
    match rustls_error(e) {
        Some(rustls::Error::InvalidMessage(_)) => {
            format!("TLS handshake failed: {e} (the server does not seem to speak TLS)")
        }
        Some(_) => format!("TLS handshake failed: {e}"),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            format!("the server closed the connection during the TLS handshake ({e})")
        }
        None => format!("TLS handshake failed: {e}"),
    }
}

/// Whether a read or write error is the server refusing the handshake (an alert it sends
/// only while verifying one): with TLS 1.3 the server checks the client's certificate
/// after the client's side is done, so its refusal arrives as the first thing read (or
/// fails the first write).
fn refused_handshake(e: &io::Error) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        rustls_error(e),
        Some(rustls::Error::AlertReceived(
            A::HandshakeFailure
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
        ))
    )
}

/// An encoded request: the frame head, then the batch the head's length accounts for.
struct Outgoing {
    head: Vec<u8>,
    /// Sent right after the head, in order (batches travel without being copied into it).
    body: Vec<Bytes>,
}

/// A pipelined connection; see the module docs. Dropping it stops its tasks.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    slots: Semaphore,
    next_id: AtomicU64,
    /// Largest request frame the server accepts (from its hello; the default until then).
    max_request_bytes: AtomicU64,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.fail(ClientError::Closed);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.shared.addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` ("host:port") within `timeout` (the TLS handshake included, with
    /// `tls`) and starts the connection's tasks. Errors name it as `label` (the address the
    /// user gave, and the core's own if this is a per-core connection). Must run inside a
    /// tokio runtime.
    pub(crate) async fn open(
        addr: &str,
        label: &str,
        timeout: Duration,
        max_in_flight: usize,
        tls: Option<&Tls>,
    ) -> Result<Connection> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: label.to_string(),
            reason,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(format!("timed out after {} ms", timeout.as_millis())))?
            .map_err(|e| connect_err(e.to_string()))?;
        // Requests are small and latency-bound; the writer coalesces them itself.
        stream
            .set_nodelay(true)
            .map_err(|e| connect_err(e.to_string()))?;
        let Some(tls) = tls else {
            let (read_half, write_half) = stream.into_split();
            return Ok(Connection::from_halves(
                label,
                read_half,
                write_half,
                max_in_flight,
            ));
        };
        let stream = tokio::time::timeout_at(
            deadline,
            tls.connector.connect(tls.server_name.clone(), stream),
        )
        .await
        .map_err(|_| {
            connect_err(format!(
                "the TLS handshake did not complete within {} ms (does the server speak TLS?)",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| connect_err(handshake_failure(&e)))?;
        let (read_half, write_half) = tokio::io::split(stream);
        Ok(Connection::from_halves(
            label,
            read_half,
            write_half,
            max_in_flight,
        ))
    }

    fn from_halves<R, W>(
        addr: &str,
        read_half: R,
        write_half: W,
        max_in_flight: usize,
    ) -> Connection
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        assert!(max_in_flight > 0, "a connection needs at least one slot");
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            waiters: Mutex::new(Waiters {
                by_id: HashMap::new(),
                streams: HashMap::new(),
                closed: None,
            }),
            draining: std::sync::atomic::AtomicBool::new(false),
            answered: std::sync::atomic::AtomicBool::new(false),
            closed: tokio::sync::Notify::new(),
        });
        let (tx, rx) = mpsc::channel(max_in_flight);
        let reader = tokio::spawn(read_loop(read_half, shared.clone()));
        let writer = tokio::spawn(write_loop(rx, write_half, shared.clone()));
        Connection {
            shared,
            outgoing: tx,
            slots: Semaphore::new(max_in_flight),
            next_id: AtomicU64::new(1),
            max_request_bytes: AtomicU64::new(DEFAULT_MAX_FRAME_BYTES as u64),
            tasks: [reader, writer],
        }
    }

    /// Whether the connection has failed (or was closed; a new request on it fails at once)
    /// or its server is shutting down: either way the next request needs a new one.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
            || self
                .shared
                .waiters
                .lock()
                .expect("waiters lock")
                .closed
                .is_some()
    }

    pub(crate) fn set_max_request_bytes(&self, bytes: u64) {
        self.max_request_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Sends one request and waits for its response frame. `encode` appends the frame head
    /// for the given correlation id; `body` follows it on the wire (a batch, or empty).
    /// Waits for an in-flight slot first. `timeout` bounds the wait for the response.
    pub(crate) async fn call(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes> {
        let body = if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        };
        self.call_parts(encode, body, timeout).await
    }

    /// As [`Connection::call`], with a body in several parts sent back to back.
    pub(crate) async fn call_parts(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        body: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut head = Vec::with_capacity(64);
        encode(&mut head, id);
        let frame_bytes = (head.len() + body.iter().map(Bytes::len).sum::<usize>()) as u64;
        let max = self.max_request_bytes.load(Ordering::Relaxed);
        if frame_bytes > max {
            return Err(ClientError::invalid(
                ErrorCode::FrameTooLarge,
                format!(
                    "request of {frame_bytes} bytes exceeds the server's maximum frame of {max}"
                ),
            ));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.shared.waiters.lock().expect("waiters lock");
            if let Some(err) = &w.closed {
                return Err(err.clone());
            }
            let previous = w.by_id.insert(id, tx);
            assert!(previous.is_none(), "correlation id {id} reused");
        }
        // Removes the waiter if this future is dropped or times out before the response.
        let _guard = WaiterGuard {
            shared: &self.shared,
            id,
        };
        if self.outgoing.send(Outgoing { head, body }).await.is_err() {
            return Err(self.closed_reason());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(self.closed_reason()),
            Err(_) => Err(ClientError::Timeout {
                addr: self.shared.addr.clone(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Sends a request answered by many frames (a subscription) and returns its
    /// correlation id and the channel its frames arrive on, in order; the channel ends
    /// after the last frame (one not flagged MORE, or an error) or when the connection
    /// fails (an error, then the end). No in-flight slot is held: the server bounds what it
    /// sends by the credit the caller grants.
    pub(crate) async fn open_stream(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
    ) -> Result<(u64, mpsc::UnboundedReceiver<Result<Bytes>>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut head = Vec::with_capacity(128);
        encode(&mut head, id);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut w = self.shared.waiters.lock().expect("waiters lock");
            if let Some(err) = &w.closed {
                return Err(err.clone());
            }
            w.streams.insert(id, tx);
        }
        if self
            .outgoing
            .send(Outgoing {
                head,
                body: Vec::new(),
            })
            .await
            .is_err()
        {
            self.shared
                .waiters
                .lock()
                .expect("waiters lock")
                .streams
                .remove(&id);
            return Err(self.closed_reason());
        }
        Ok((id, rx))
    }

    fn closed_reason(&self) -> ClientError {
        let w = self.shared.waiters.lock().expect("waiters lock");
        w.closed
            .clone()
            .unwrap_or_else(|| self.shared.lost("connection tasks stopped"))
    }
}

struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.waiters.lock() {
            w.by_id.remove(&self.id);
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Outgoing>,
    write_half: W,
    shared: Arc<Shared>,
) {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write_half);
    let mut burst: Vec<Outgoing> = Vec::new();
    loop {
        // The connection closed (the server's end, its goodbye, a failure): close this side
        // too at once, so a server waiting for its clients to hang up is not kept waiting
        // by an idle connection in the pool.
        let first = tokio::select! {
            msg = rx.recv() => msg,
            () = shared.closed.notified() => None,
        };
        let Some(first) = first else { break };
        let mut parts = 1 + first.body.len();
        burst.push(first);
        while parts < BURST_PARTS_MAX {
            match rx.try_recv() {
                Ok(msg) => {
                    parts += 1 + msg.body.len();
                    burst.push(msg);
                }
                Err(_) => break,
            }
        }
        let result = write_burst(&mut w, &burst).await;
        burst.clear();
        if let Err(e) = result {
            // A TLS 1.3 server refuses a client certificate after the client's side of the
            // handshake is done: the alert can surface on the first write as well as on
            // the first read.
            let unanswered = !shared.answered.load(std::sync::atomic::Ordering::Acquire);
            let err = if unanswered && refused_handshake(&e) {
                ClientError::Connect {
                    addr: shared.addr.clone(),
                    reason: format!("the server refused the TLS handshake: {e}"),
                }
            } else {
                shared.lost(format!("write failed: {e}"))
            };
            shared.fail(err);
            return;
        }
    }
    // Every sender is gone (the connection is being dropped), or it closed.
    let _ = w.shutdown().await;
}

/// Writes a burst of queued requests, heads and batches together, then flushes once. One
/// vectored write takes as much of it as the socket will (a batch is never copied into the
/// buffer unless what is left of the burst is smaller than the buffer: the small requests of
/// a burst still share a syscall).
async fn write_burst<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    burst: &[Outgoing],
) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = burst
        .iter()
        .flat_map(|m| std::iter::once(&m.head[..]).chain(m.body.iter().map(|b| &b[..])))
        .filter(|s| !s.is_empty())
        .map(io::IoSlice::new)
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    w.flush().await
}

async fn read_loop<R: AsyncRead + Unpin>(mut read_half: R, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // Whether the server has answered anything yet: a failure before that means it never
    // took this connection (see `refused_handshake`, `speaks_tls`).
    let mut answered = false;
    loop {
        loop {
            let (len, id, is_error, more) = match decode_frame(&buf, DEFAULT_MAX_FRAME_BYTES) {
                Ok(Some(frame)) => (
                    frame.encoded_len(),
                    frame.header.correlation_id,
                    frame.header.is_error(),
                    frame.header.has_more(),
                ),
                Ok(None) => break,
                Err(_) if !answered && speaks_tls(&buf) => {
                    shared.fail(ClientError::Connect {
                        addr: shared.addr.clone(),
                        reason: "the server answered with a TLS alert: it requires TLS".into(),
                    });
                    return;
                }
                Err(e) => {
                    shared.fail(shared.lost(format!("undecodable frame from the server: {e}")));
                    return;
                }
            };
            if !answered {
                answered = true;
                shared
                    .answered
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            let frame = buf.split_to(len).freeze();
            dispatch(&shared, id, is_error, more, frame);
        }
        // Make room for the rest of a frame whose header is in, or for a fresh chunk.
        let want = match peek_header(&buf, DEFAULT_MAX_FRAME_BYTES) {
            Ok(Some(h)) => (h.frame_len as usize).saturating_sub(buf.len()),
            _ => 0,
        };
        buf.reserve(want.max(READ_CHUNK_BYTES));
        match read_half.read_buf(&mut buf).await {
            Ok(0) => {
                shared.fail(shared.lost("closed by the server"));
                return;
            }
            Ok(_) => {}
            Err(e) if !answered && refused_handshake(&e) => {
                shared.fail(ClientError::Connect {
                    addr: shared.addr.clone(),
                    reason: format!("the server refused the TLS handshake: {e}"),
                });
                return;
            }
            Err(e) => {
                shared.fail(shared.lost(format!("read failed: {e}")));
                return;
            }
        }
    }
}

/// Whether a plaintext connection's first bytes are a TLS alert record (content type 21,
/// version 3.x): a TLS server refusing what it read as a handshake.
fn speaks_tls(first: &[u8]) -> bool {
    first.len() >= 2 && first[0] == 0x15 && first[1] == 0x03
}

/// Hands a response frame to its waiter. A frame nobody waits for belongs to a request that
/// was cancelled or timed out, except an error with correlation id 0: the server's answer
/// to a frame it could not read, sent just before it closes the connection.
fn dispatch(shared: &Shared, id: u64, is_error: bool, more: bool, frame: Bytes) {
    if is_error {
        if let Err(e) = decode_reply(&frame, None) {
            if e.code() == Some(ErrorCode::ShuttingDown) {
                shared
                    .draining
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    let waiter = {
        let mut w = shared.waiters.lock().expect("waiters lock");
        if let Some(tx) = w.streams.get(&id) {
            let delivered = tx.send(Ok(frame)).is_ok();
            if !more || !delivered {
                w.streams.remove(&id);
            }
            return;
        }
        w.by_id.remove(&id)
    };
    match waiter {
        Some(tx) => {
            let _ = tx.send(Ok(frame));
        }
        None if id == 0 && is_error => {
            let reason = match decode_reply(&frame, None) {
                // Refused as it was accepted, or the server's last word at shutdown: what
                // is still waiting was not applied (nothing is, once a shutdown began), so
                // it fails with an answer safe to retry.
                Err(
                    e @ ClientError::Server {
                        code: ErrorCode::ShuttingDown | ErrorCode::TooManyConnections,
                        ..
                    },
                ) => {
                    return shared.fail(e);
                }
                Err(e) => format!("the server closed the connection: {e}"),
                Ok(_) => "the server closed the connection".to_string(),
            };
            shared.fail(shared.lost(reason));
        }
        None => tracing::debug!(id, "response for a request nobody waits for"),
    }
}

/// Decodes a response frame into the success response for `expect` (any opcode when
/// `None`), or the error the server answered.
pub(crate) fn decode_reply(frame: &Bytes, expect: Option<Opcode>) -> Result<Response<'_>> {
    let decoded = decode_frame(frame, DEFAULT_MAX_FRAME_BYTES)
        .map_err(|e| ClientError::protocol(e.to_string()))?
        .ok_or_else(|| ClientError::protocol("truncated response frame"))?;
    match decode_response(&decoded) {
        Ok(Ok(response)) => match expect {
            Some(op) if response.opcode() != op => Err(ClientError::protocol(format!(
                "expected a {} response, got {}",
                op.name(),
                response.opcode().name()
            ))),
            _ => Ok(response),
        },
        Ok(Err(e)) => Err(ClientError::from_wire(
            e.code,
            e.retry_after_ms,
            e.message,
            e.shard_map_version,
        )),
        Err(e) => Err(ClientError::Protocol {
            code: e.code(),
            message: format!("undecodable response: {e}"),
        }),
    }
}
