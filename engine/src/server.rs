//! The network server: every engine core accepts connections and serves the wire protocol.
//!
//! Listening: each core binds the public address with SO_REUSEPORT (the kernel spreads
//! connections over the cores) and its own advertised address, which `Hello` reports so a
//! shard-aware client can talk straight to the core that owns a shard.
//!
//! Data flow for a put (see ARCHITECTURE.md): the connection's reader task reads the socket
//! into a buffer, splits off each complete frame without copying (`bytes::BytesMut`), and
//! spawns one task per request, so a put waiting for its fdatasync never holds up the next
//! request on the connection (pipelining). A request for a local shard calls the shard
//! directly; one for another core's shard is forwarded over that core's bounded channel
//! (the batch is copied once into the message). Responses are appended to the
//! connection's outbox and written by its writer task; the correlation id matches them.
//!
//! Bounds, each answered with an error code rather than a stall or a crash: frame size
//! (FrameTooLarge, then close), connections per core (TooManyConnections, then close),
//! in-flight requests per connection and request bytes held per core (ServerBusy). A frame
//! that cannot be parsed closes only its own connection.
//!
//! Concurrency contract: everything here runs on the core that accepted the connection;
//! the only cross-thread step is the forward to another core's channel.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};
use spate_protocol::batch::{BatchHeader, BATCH_HEADER_LEN};
use spate_protocol::hello::{CoreInfo, HelloResponse};
use spate_protocol::read::{GetRecordsHead, IteratorPosition};
use spate_protocol::stream::{
    CreateStreamResponse, ListStreamsResponse, ShardDescription, ShardState, StreamDescription,
};
use spate_protocol::token::IteratorToken;
use spate_protocol::write::{
    PutBatchResponse, PutBatchesResponse, PutRecordResponse, Rejection, ShardBatch, ShardFailure,
    ShardOutcome,
};
use spate_protocol::{
    decode_request, encode_error, encode_response, peek_header, ErrorCode, ErrorResponse, Frame,
    FrameHeader, Opcode, Request, Response, PROTOCOL_VERSION,
};

use crate::catalog::{self, StreamEntry};
use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::io::Storage;
use crate::limits::Limits;
use crate::notify::Notify;
use crate::runtime::{
    call, ControlOp, Core, CoreMsg, PutOutcome, ReadRequest, ShardIdent, StartPosition,
};
use crate::store::ReadOutput;

/// How long a shutdown waits for in-flight requests before flushing anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Kinesis caps one read at 10,000 records and 10 MiB.
const MAX_READ_RECORDS: u32 = 10_000;
const MAX_READ_BYTES: u32 = 10 << 20;

/// A core's network state: listeners, topology and request accounting.
#[derive(Default)]
pub(crate) struct NetState {
    pub(crate) topology: RefCell<Vec<String>>,
    listeners: RefCell<Vec<Rc<TcpListener>>>,
    connections: Cell<usize>,
    /// Requests accepted and not yet answered on the socket.
    inflight: Cell<usize>,
    /// Frame bytes held by in-flight requests.
    buffered_bytes: Cell<usize>,
    idle: Notify,
}

/// A running server: the engine plus its listeners.
pub struct Server {
    engine: Engine,
    public: SocketAddr,
    cores: Vec<SocketAddr>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("public", &self.public)
            .field("cores", &self.cores)
            .finish()
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, EngineError> {
    addr.to_socket_addrs()
        .map_err(|e| EngineError::Startup(format!("cannot resolve listen address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| EngineError::Startup(format!("listen address {addr:?} resolves to nothing")))
}

impl Server {
    /// Starts the engine and its listeners; returns once every core listens.
    pub fn start(cfg: EngineConfig) -> Result<Server, EngineError> {
        let listen = resolve(&cfg.listen)?;
        let engine = Engine::start(cfg)?;
        let n = engine.core_cpus().len();
        // A core's own port: the public port + 1 + its index, or any free port when the
        // public port is 0 (tests).
        let own = |public: SocketAddr, i: usize| {
            let port = if listen.port() == 0 {
                0
            } else {
                public.port() + 1 + i as u16
            };
            SocketAddr::new(public.ip(), port)
        };
        let bind =
            |i: usize, public: Option<SocketAddr>, own: SocketAddr| {
                futures_lite::future::block_on(call(engine.core_sender(i), |reply| {
                    CoreMsg::Listen { public, own, reply }
                }))
            };
        // With a fixed port every core joins the public address's SO_REUSEPORT group. With
        // port 0 (tests) only core 0 takes it, without SO_REUSEPORT: the kernel may hand the
        // same ephemeral port to another process's reuse-port socket otherwise.
        let (public, own0) = bind(0, Some(listen), own(listen, 0))?;
        let public = public.expect("core 0 binds the public address");
        let mut cores = vec![own0];
        for i in 1..n {
            let join = (listen.port() != 0).then_some(public);
            cores.push(bind(i, join, own(public, i))?.1);
        }
        let addrs: Vec<String> = cores.iter().map(|a| a.to_string()).collect();
        for i in 0..n {
            let addrs = addrs.clone();
            futures_lite::future::block_on(call(engine.core_sender(i), |reply| {
                CoreMsg::SetTopology { addrs, reply }
            }))?;
        }
        tracing::info!(%public, ?cores, "listening");
        Ok(Server {
            engine,
            public,
            cores,
        })
    }

    /// The public address (every core accepts there).
    pub fn local_addr(&self) -> SocketAddr {
        self.public
    }

    /// Each core's own advertised address, by core index.
    pub fn core_addrs(&self) -> Vec<SocketAddr> {
        self.cores.clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops accepting, drains in-flight requests, flushes every shard and stops the cores.
    pub fn shutdown(self) {
        self.engine.shutdown();
    }
}

impl<S: Storage + 'static> Core<S> {
    /// Binds this core's listeners and starts accepting on them.
    pub(crate) fn listen(
        self: Rc<Self>,
        public: Option<SocketAddr>,
        own: SocketAddr,
    ) -> Result<(Option<SocketAddr>, SocketAddr), EngineError> {
        let reuse_port = public.is_some_and(|p| p.port() != 0);
        let public_listener = public.map(|p| bind_listener(p, reuse_port)).transpose()?;
        let own_listener = bind_listener(own, false)?;
        let local = |l: &TcpListener| {
            l.local_addr()
                .map_err(|e| EngineError::Startup(format!("listener address: {e}")))
        };
        let addrs = (
            public_listener.as_ref().map(local).transpose()?,
            local(&own_listener)?,
        );
        for l in public_listener.into_iter().chain([own_listener]) {
            let l = Rc::new(l);
            self.net.listeners.borrow_mut().push(l.clone());
            glommio::spawn_local(accept_loop(self.clone(), l)).detach();
        }
        Ok(addrs)
    }

    /// Waits (bounded) until every accepted request was answered: called at shutdown,
    /// after `stopping` is set so that no new request is taken.
    pub(crate) async fn drain_requests(&self) {
        let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
        while self.net.inflight.get() > 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                tracing::warn!(
                    core = self.index,
                    inflight = self.net.inflight.get(),
                    "drain timed out"
                );
                return;
            }
            let idle = async {
                self.net.idle.wait().await;
                true
            };
            let timeout = async {
                glommio::timer::sleep(deadline - now).await;
                false
            };
            futures_lite::future::or(idle, timeout).await;
        }
        self.net.listeners.borrow_mut().clear();
    }

    fn request_done(&self, frame_bytes: usize) {
        let net = &self.net;
        net.inflight.set(net.inflight.get() - 1);
        net.buffered_bytes
            .set(net.buffered_bytes.get() - frame_bytes);
        if net.inflight.get() == 0 {
            net.idle.notify_all();
        }
    }
}

/// A listening socket, with SO_REUSEPORT only when asked (glommio's own `bind` always sets
/// it, which is wrong for ephemeral ports).
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, EngineError> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fail = |e: io::Error| EngineError::Startup(format!("cannot listen on {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(reuse_port).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    // SAFETY: the descriptor is a bound, listening TCP socket we own and hand over.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

async fn accept_loop<S: Storage + 'static>(core: Rc<Core<S>>, listener: Rc<TcpListener>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if core.stopping.get() {
                    return;
                }
                tracing::warn!(core = core.index, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if core.stopping.get() {
            reject(
                stream,
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            )
            .await;
            continue;
        }
        if core.net.connections.get() >= core.cfg.max_connections_per_core {
            reject(
                stream,
                ErrorCode::TooManyConnections,
                "too many connections on this core",
            )
            .await;
            continue;
        }
        let _ = stream.set_nodelay(true);
        core.net.connections.set(core.net.connections.get() + 1);
        let c = core.clone();
        glommio::spawn_local(async move {
            Connection::serve(c.clone(), stream).await;
            c.net.connections.set(c.net.connections.get() - 1);
        })
        .detach();
    }
}

async fn reject(mut stream: TcpStream, code: ErrorCode, message: &str) {
    let mut out = Vec::new();
    encode_error(
        &mut out,
        0,
        0,
        &ErrorResponse {
            code,
            retry_after_ms: 100,
            message,
        },
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// The two halves of a socket used by one task each. Both live on one thread and each poll
/// borrows the stream only for its own duration, so the halves never overlap.
struct Half(Rc<RefCell<TcpStream>>);

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

/// Responses waiting to be written, and how many requests they answer.
#[derive(Default)]
struct Outbox {
    buf: RefCell<Vec<u8>>,
    /// Frame bytes of the requests whose responses sit in `buf`.
    answered: RefCell<Vec<usize>>,
    ready: Notify,
    closed: Cell<bool>,
    /// Requests of this connection not yet answered on the socket.
    inflight: Cell<usize>,
}

struct Connection<S: Storage> {
    core: Rc<Core<S>>,
    outbox: Rc<Outbox>,
}

impl<S: Storage + 'static> Connection<S> {
    async fn serve(core: Rc<Core<S>>, stream: TcpStream) {
        let stream = Rc::new(RefCell::new(stream));
        let outbox = Rc::new(Outbox::default());
        let writer = glommio::spawn_local(write_loop(
            core.clone(),
            Half(stream.clone()),
            outbox.clone(),
        ));
        let conn = Rc::new(Connection {
            core,
            outbox: outbox.clone(),
        });
        if let Err(e) = conn.read_loop(Half(stream)).await {
            tracing::debug!(error = %e, "connection closed");
        }
        // Let the writer send what the in-flight requests answer, then stop.
        outbox.closed.set(true);
        outbox.ready.notify_all();
        writer.await;
    }

    /// Reads frames and dispatches each as its own task, until EOF or a framing error.
    async fn read_loop(self: &Rc<Self>, mut reader: Half) -> io::Result<()> {
        let max_frame = self.core.cfg.max_frame_bytes;
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        loop {
            // Dispatch every complete frame in the buffer; remember how long a partial one is.
            let mut partial_len = 0;
            loop {
                let checked = match peek_header(&buf, max_frame) {
                    Ok(Some(h)) if buf.len() >= h.frame_len as usize => {
                        // Validate the whole frame before a task relies on it.
                        spate_protocol::decode_frame(&buf[..h.frame_len as usize], max_frame)
                            .map(|_| Some(h))
                    }
                    Ok(Some(h)) => {
                        partial_len = h.frame_len as usize;
                        Ok(None)
                    }
                    other => other,
                };
                match checked {
                    Ok(None) => break,
                    Ok(Some(h)) => {
                        // Owned and refcounted, no copy: the request task keeps it alive.
                        let frame = buf.split_to(h.frame_len as usize).freeze();
                        self.dispatch(h, frame);
                    }
                    Err(e) => {
                        // The stream is out of step: answer once and close this connection.
                        let code = ErrorCode::from(e.clone());
                        let message = e.to_string();
                        self.respond_now(0, 0, code, &message);
                        return Ok(());
                    }
                }
            }
            // Read at least a chunk, or the rest of a large frame in one go.
            let start = buf.len();
            let want = READ_CHUNK_BYTES.max(partial_len.saturating_sub(start));
            buf.resize(start + want, 0);
            let n = reader.read(&mut buf[start..]).await?;
            buf.truncate(start + n);
            if n == 0 {
                return Ok(());
            }
        }
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
            },
        );
        self.outbox.buf.borrow_mut().extend_from_slice(&out);
        self.outbox.ready.notify_all();
    }

    fn dispatch(self: &Rc<Self>, header: FrameHeader, frame: Bytes) {
        let core = &self.core;
        let (opcode, cid) = (header.opcode, header.correlation_id);
        if core.stopping.get() {
            return self.respond_now(
                opcode,
                cid,
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            );
        }
        if self.outbox.inflight.get() >= core.cfg.max_inflight_per_connection {
            return self.respond_now(
                opcode,
                cid,
                ErrorCode::ServerBusy,
                "too many requests in flight on this connection",
            );
        }
        let net = &core.net;
        if net.buffered_bytes.get() + frame.len() > core.cfg.max_buffered_bytes_per_core {
            return self.respond_now(
                opcode,
                cid,
                ErrorCode::ServerBusy,
                "the core holds too many request bytes",
            );
        }
        net.inflight.set(net.inflight.get() + 1);
        net.buffered_bytes
            .set(net.buffered_bytes.get() + frame.len());
        self.outbox.inflight.set(self.outbox.inflight.get() + 1);
        let conn = self.clone();
        glommio::spawn_local(async move {
            let mut out = Vec::new();
            handle(&conn.core, &frame, &mut out).await;
            conn.outbox.buf.borrow_mut().extend_from_slice(&out);
            conn.outbox.answered.borrow_mut().push(frame.len());
            conn.outbox.ready.notify_all();
        })
        .detach();
    }
}

async fn write_loop<S: Storage + 'static>(core: Rc<Core<S>>, mut writer: Half, outbox: Rc<Outbox>) {
    let mut sending = Vec::new();
    let mut failed = false;
    loop {
        std::mem::swap(&mut sending, &mut *outbox.buf.borrow_mut());
        let answered: Vec<usize> = std::mem::take(&mut *outbox.answered.borrow_mut());
        if !sending.is_empty() && !failed && writer.write_all(&sending).await.is_err() {
            // The peer is gone; keep accounting for requests still finishing.
            failed = true;
        }
        sending.clear();
        for bytes in answered {
            outbox.inflight.set(outbox.inflight.get() - 1);
            core.request_done(bytes);
        }
        let idle = outbox.buf.borrow().is_empty() && outbox.answered.borrow().is_empty();
        if idle {
            if outbox.closed.get() && outbox.inflight.get() == 0 {
                let _ = writer.close().await;
                return;
            }
            outbox.ready.wait().await;
        }
    }
}

/// One request, start to finish: decode, execute, encode the response into `out`.
async fn handle<S: Storage + 'static>(core: &Rc<Core<S>>, frame_bytes: &Bytes, out: &mut Vec<u8>) {
    // The reader validated this exact frame; failing here would be a bug, answered as one.
    let Ok(Some(frame)) = spate_protocol::decode_frame(frame_bytes, usize::MAX) else {
        let message = "frame failed to decode twice";
        let e = ErrorResponse {
            code: ErrorCode::Internal,
            retry_after_ms: 0,
            message,
        };
        return encode_error(out, 0, 0, &e);
    };
    let (opcode, cid) = (frame.header.opcode, frame.header.correlation_id);
    let result = match decode_request(&frame) {
        Ok(req) => execute(core, &frame, req, out).await,
        Err(e) => Err((e.code(), 0, e.to_string())),
    };
    if let Err((code, retry_after_ms, message)) = result {
        encode_error(
            out,
            opcode,
            cid,
            &ErrorResponse {
                code,
                retry_after_ms,
                message: &message,
            },
        );
    }
}

type Failure = (ErrorCode, u32, String);

/// The one place engine errors become wire codes.
pub fn error_code(e: &EngineError) -> (ErrorCode, u32) {
    match e {
        EngineError::UnknownStream(_) => (ErrorCode::UnknownStream, 0),
        EngineError::StreamExists(_) => (ErrorCode::StreamExists, 0),
        EngineError::UnknownShard { .. } => (ErrorCode::UnknownShard, 0),
        EngineError::InvalidArgument(_) => (ErrorCode::InvalidArgument, 0),
        EngineError::InvalidBatch(b) => (ErrorCode::from(b.clone()), 0),
        EngineError::Throttled { retry_after_ms } => (ErrorCode::Throttled, *retry_after_ms),
        EngineError::ReadThrottled { retry_after_ms } => {
            (ErrorCode::ReadThrottled, *retry_after_ms)
        }
        EngineError::LimitExceeded(_) => (ErrorCode::LimitExceeded, 0),
        EngineError::StorageFull => (ErrorCode::StorageFull, 1000),
        EngineError::Io(_) => (ErrorCode::StorageIo, 0),
        EngineError::Poisoned(_) => (ErrorCode::ShardPoisoned, 0),
        EngineError::Corrupt(_) | EngineError::Startup(_) => (ErrorCode::Internal, 0),
        EngineError::ShuttingDown => (ErrorCode::ShuttingDown, 100),
    }
}

fn fail(e: EngineError) -> Failure {
    let (code, retry) = error_code(&e);
    (code, retry, e.to_string())
}

fn to_wire_limits(l: Limits) -> spate_protocol::stream::Limits {
    match l {
        Limits::Kinesis => spate_protocol::stream::Limits::Kinesis,
        Limits::Off => spate_protocol::stream::Limits::Off,
        Limits::Custom {
            write_bytes_per_s,
            write_records_per_s,
            read_bytes_per_s,
        } => spate_protocol::stream::Limits::Custom {
            write_bytes_per_s,
            write_records_per_s,
            read_bytes_per_s,
        },
    }
}

fn from_wire_limits(l: spate_protocol::stream::Limits) -> Limits {
    match l {
        spate_protocol::stream::Limits::Kinesis => Limits::Kinesis,
        spate_protocol::stream::Limits::Off => Limits::Off,
        spate_protocol::stream::Limits::Custom {
            write_bytes_per_s,
            write_records_per_s,
            read_bytes_per_s,
        } => Limits::Custom {
            write_bytes_per_s,
            write_records_per_s,
            read_bytes_per_s,
        },
    }
}

impl<S: Storage + 'static> Core<S> {
    fn route(&self, stream: &str) -> Result<Rc<StreamEntry>, EngineError> {
        self.routes
            .borrow()
            .get(stream)
            .cloned()
            .ok_or_else(|| EngineError::UnknownStream(stream.to_owned()))
    }

    /// The shard's identity and owning core.
    fn locate(
        &self,
        stream: &str,
        shard_id: u32,
    ) -> Result<(ShardIdent, usize, Rc<StreamEntry>), EngineError> {
        let entry = self.route(stream)?;
        let (ident, owner) = entry.locate(shard_id, self.peers.len())?;
        Ok((ident, owner, entry))
    }

    async fn control_op(&self, op: ControlOp) -> Result<Vec<StreamEntry>, EngineError> {
        call(&self.peers[0], |reply| CoreMsg::Control { op, reply }).await
    }

    async fn put(
        &self,
        ident: ShardIdent,
        owner: usize,
        batch: &[u8],
    ) -> Result<PutOutcome, EngineError> {
        if owner == self.index {
            self.append(ident, batch).await
        } else {
            // Forwarded: the batch is copied into the message for the owning core.
            let batch = batch.to_vec();
            call(&self.peers[owner], |reply| CoreMsg::Append {
                ident,
                batch,
                reply,
            })
            .await
        }
    }

    /// Puts one batch to each of several shards of a stream: this core's shards directly,
    /// every other core's in one message to it; all at once. One result per batch, in order.
    async fn put_many(
        &self,
        entry: &StreamEntry,
        batches: &[ShardBatch<'_>],
    ) -> Vec<Result<PutOutcome, EngineError>> {
        let cores = self.peers.len();
        let mut results: Vec<Option<Result<PutOutcome, EngineError>>> = vec![None; batches.len()];
        let mut local = Vec::new();
        let mut remote: Vec<Vec<(usize, ShardIdent, Vec<u8>)>> = vec![Vec::new(); cores];
        for (i, b) in batches.iter().enumerate() {
            match entry.locate(b.shard_id, cores) {
                Ok((ident, owner)) if owner == self.index => local.push((i, ident)),
                // Forwarded: the batch is copied into the message for the owning core.
                Ok((ident, owner)) => remote[owner].push((i, ident, b.batch.to_vec())),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let here = async {
            let items: Vec<(ShardIdent, &[u8])> = local
                .iter()
                .map(|(i, ident)| (*ident, batches[*i].batch))
                .collect();
            let got = self.append_many(&items).await;
            local.iter().map(|(i, _)| *i).zip(got).collect::<Vec<_>>()
        };
        let there = crate::store::join_all(
            remote
                .into_iter()
                .enumerate()
                .filter(|(_, v)| !v.is_empty())
                .map(|(owner, items)| async move {
                    let index: Vec<usize> = items.iter().map(|(i, _, _)| *i).collect();
                    let items: Vec<(ShardIdent, Vec<u8>)> =
                        items.into_iter().map(|(_, ident, b)| (ident, b)).collect();
                    let n = items.len();
                    let got = call(&self.peers[owner], |reply| CoreMsg::AppendMany {
                        items,
                        reply,
                    })
                    .await
                    .unwrap_or_else(|e| (0..n).map(|_| Err(e.clone())).collect());
                    index.into_iter().zip(got).collect::<Vec<_>>()
                }),
        );
        let (here, there) = futures_lite::future::zip(here, there).await;
        for (i, r) in here.into_iter().chain(there.into_iter().flatten()) {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.expect("every batch has a result"))
            .collect()
    }

    async fn read_shard(
        &self,
        ident: ShardIdent,
        owner: usize,
        req: ReadRequest,
    ) -> Result<ReadOutput, EngineError> {
        if owner == self.index {
            self.read(ident, req).await
        } else {
            call(&self.peers[owner], |reply| CoreMsg::Read {
                ident,
                req,
                reply,
            })
            .await
        }
    }

    async fn position_of(
        &self,
        ident: ShardIdent,
        owner: usize,
        pos: StartPosition,
    ) -> Result<u64, EngineError> {
        if owner == self.index {
            self.position(ident, pos).await
        } else {
            call(&self.peers[owner], |reply| CoreMsg::Position {
                ident,
                pos,
                reply,
            })
            .await
        }
    }
}

async fn execute<S: Storage + 'static>(
    core: &Rc<Core<S>>,
    frame: &Frame<'_>,
    req: Request<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let cid = frame.header.correlation_id;
    let respond = |out: &mut Vec<u8>, r: &Response<'_>| encode_response(out, cid, r);
    match req {
        Request::Hello(_) => {
            let topology = core.net.topology.borrow().clone();
            let cores = topology
                .iter()
                .enumerate()
                .map(|(i, a)| CoreInfo {
                    core_id: i as u16,
                    address: a.as_str(),
                })
                .collect();
            let hello = HelloResponse {
                protocol_version: PROTOCOL_VERSION,
                max_frame_bytes: core.cfg.max_frame_bytes as u32,
                cores,
            };
            respond(out, &Response::Hello(hello));
        }
        Request::CreateStream(r) => {
            let opts = crate::catalog::StreamOptions {
                shard_count: r.shard_count,
                retention_hours: r.retention_hours,
                limits: from_wire_limits(r.limits),
                max_record_data_bytes: r
                    .max_record_data_bytes
                    .unwrap_or(spate_protocol::batch::DEFAULT_MAX_RECORD_DATA_BYTES as u32),
            };
            let max = spate_protocol::batch::MAX_RECORD_DATA_BYTES_CEILING as u32;
            if opts.max_record_data_bytes == 0 || opts.max_record_data_bytes > max {
                return Err(fail(EngineError::InvalidArgument(format!(
                    "max record size must be 1..={max}"
                ))));
            }
            let op = ControlOp::CreateStream {
                name: r.name.to_owned(),
                opts,
            };
            let entry = core
                .control_op(op)
                .await
                .map_err(fail)?
                .pop()
                .expect("created");
            respond(
                out,
                &Response::CreateStream(CreateStreamResponse {
                    stream_id: entry.stream_id,
                }),
            );
        }
        Request::DeleteStream(r) => {
            core.control_op(ControlOp::DeleteStream {
                name: r.name.to_owned(),
            })
            .await
            .map_err(fail)?;
            respond(out, &Response::DeleteStream);
        }
        Request::IncreaseRetention(r) | Request::DecreaseRetention(r) => {
            let current = core.route(r.name).map_err(fail)?.retention_hours;
            let increase =
                matches!(frame.header.opcode, x if x == Opcode::IncreaseRetention.as_u16());
            if (increase && r.retention_hours < current)
                || (!increase && r.retention_hours > current)
            {
                let dir = if increase { "increase" } else { "decrease" };
                return Err(fail(EngineError::InvalidArgument(format!(
                    "cannot {dir} retention from {current} h to {} h",
                    r.retention_hours
                ))));
            }
            catalog::validate_retention(r.retention_hours).map_err(fail)?;
            core.control_op(ControlOp::SetRetention {
                name: r.name.to_owned(),
                hours: r.retention_hours,
            })
            .await
            .map_err(fail)?;
            respond(
                out,
                if increase {
                    &Response::IncreaseRetention
                } else {
                    &Response::DecreaseRetention
                },
            );
        }
        Request::ListStreams(r) => {
            let mut names: Vec<String> = core.routes.borrow().keys().cloned().collect();
            names.sort();
            let start = r.exclusive_start_name;
            let limit = if r.limit == 0 {
                1000
            } else {
                r.limit.min(10_000)
            } as usize;
            let after: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| start.is_none_or(|s| *n > s))
                .collect();
            let has_more = after.len() > limit;
            let page = after.into_iter().take(limit).collect();
            respond(
                out,
                &Response::ListStreams(ListStreamsResponse {
                    names: page,
                    has_more,
                }),
            );
        }
        Request::DescribeStream(r) => {
            let entry = core.route(r.name).map_err(fail)?;
            let mut shards = Vec::with_capacity(entry.shards.len());
            for sh in &entry.shards {
                let ident = ShardIdent {
                    stream_id: entry.stream_id,
                    shard_id: sh.shard_id,
                };
                let owner = sh.core as usize % core.peers.len();
                let stats = call(&core.peers[owner], |reply| CoreMsg::Stats { ident, reply })
                    .await
                    .map_err(fail)?;
                let (start, end) = sh.hash_range();
                let has_data = stats.next_seq > stats.first_seq;
                shards.push(ShardDescription {
                    id: sh.shard_id,
                    state: if sh.state == catalog::ShardState::Open {
                        ShardState::Open
                    } else {
                        ShardState::Closed
                    },
                    hash_key_start: start,
                    hash_key_end: end,
                    parent: sh.parent,
                    adjacent_parent: None,
                    core: owner as u16,
                    first_seq: has_data.then_some(stats.first_seq),
                    last_seq: has_data.then(|| stats.next_seq - 1),
                });
            }
            let d = StreamDescription {
                name: &entry.name,
                stream_id: entry.stream_id,
                retention_hours: entry.retention_hours,
                limits: to_wire_limits(entry.limits),
                max_record_data_bytes: entry.max_record_data_bytes,
                shards,
            };
            respond(out, &Response::DescribeStream(d));
        }
        Request::PutRecord(r) => {
            let hash = r
                .hash_key()
                .map_err(|e| (ErrorCode::from(e.clone()), 0, e.to_string()))?;
            let entry = core.route(r.stream).map_err(fail)?;
            let shard = entry
                .shards
                .iter()
                .find(|s| {
                    s.state == catalog::ShardState::Open
                        && (s.hash_range().0..=s.hash_range().1).contains(&hash)
                })
                .ok_or_else(|| {
                    (
                        ErrorCode::Internal,
                        0,
                        "no open shard covers the hash key".to_string(),
                    )
                })?;
            let (ident, owner, _) = core.locate(r.stream, shard.shard_id).map_err(fail)?;
            let outcome = core.put(ident, owner, r.batch).await.map_err(fail)?;
            if outcome.accepted == 0 {
                let retry = outcome.retry_after_ms.unwrap_or(1);
                return Err((
                    ErrorCode::Throttled,
                    retry,
                    "write limit of the shard reached".into(),
                ));
            }
            respond(
                out,
                &Response::PutRecord(PutRecordResponse {
                    shard_id: outcome.shard_id,
                    seq: outcome.base_seq,
                }),
            );
        }
        Request::PutBatch(r) => {
            let (ident, owner, _) = core.locate(r.stream, r.shard_id).map_err(fail)?;
            let response = put_batch_response(r.shard_id, core.put(ident, owner, r.batch).await)
                .map_err(fail)?;
            respond(out, &Response::PutBatch(response));
        }
        Request::PutBatches(r) => {
            let entry = core.route(r.stream).map_err(fail)?;
            let results = core.put_many(&entry, &r.batches).await;
            let messages: Vec<String> = results
                .iter()
                .map(|res| match res {
                    Err(e) if !matches!(e, EngineError::Throttled { .. }) => e.to_string(),
                    _ => String::new(),
                })
                .collect();
            let outcomes = r
                .batches
                .iter()
                .zip(results)
                .zip(&messages)
                .map(
                    |((b, res), message)| match put_batch_response(b.shard_id, res) {
                        Ok(stored) => ShardOutcome::Stored(stored),
                        Err(e) => {
                            let (code, retry_after_ms) = error_code(&e);
                            ShardOutcome::Failed(ShardFailure {
                                shard_id: b.shard_id,
                                code,
                                retry_after_ms,
                                message,
                            })
                        }
                    },
                )
                .collect();
            respond(out, &Response::PutBatches(PutBatchesResponse { outcomes }));
        }
        Request::GetIterator(r) => {
            let (ident, owner, entry) = core.locate(r.stream, r.shard_id).map_err(fail)?;
            let pos = match r.position {
                IteratorPosition::TrimHorizon => StartPosition::TrimHorizon,
                IteratorPosition::Latest => StartPosition::Latest,
                IteratorPosition::AtSequenceNumber { seq } => StartPosition::AtSequence(seq),
                IteratorPosition::AfterSequenceNumber { seq } => StartPosition::AfterSequence(seq),
                IteratorPosition::AtTimestamp { ts_ms } => StartPosition::AtTimestamp(ts_ms),
            };
            let seq = core.position_of(ident, owner, pos).await.map_err(fail)?;
            let token = IteratorToken {
                stream_id: entry.stream_id,
                shard_id: r.shard_id,
                next_seq: seq,
                issued_at_ms: core.clock.now_ms(),
            }
            .encode();
            respond(
                out,
                &Response::GetIterator(spate_protocol::read::GetIteratorResponse {
                    iterator: &token,
                }),
            );
        }
        Request::GetRecords(r) => {
            let now = core.clock.now_ms();
            let token = IteratorToken::decode_live(r.iterator, now).map_err(|code| {
                let why = if code == ErrorCode::IteratorExpired {
                    "iterator expired (5 minutes)"
                } else {
                    "invalid iterator"
                };
                (code, 0, why.to_string())
            })?;
            let entry = core
                .routes
                .borrow()
                .values()
                .find(|e| e.stream_id == token.stream_id)
                .cloned()
                .ok_or_else(|| {
                    (
                        ErrorCode::InvalidIterator,
                        0,
                        "the iterator's stream no longer exists".to_string(),
                    )
                })?;
            let (ident, owner, _) = core.locate(&entry.name, token.shard_id).map_err(fail)?;
            let req = ReadRequest {
                from_seq: token.next_seq,
                max_records: r.max_records.clamp(1, MAX_READ_RECORDS),
                max_bytes: r.max_bytes.clamp(1, MAX_READ_BYTES) as usize,
                wait_ms: r.wait_ms,
            };
            let got = core.read_shard(ident, owner, req).await.map_err(fail)?;
            let now = core.clock.now_ms();
            let next = IteratorToken {
                next_seq: got.end_seq,
                issued_at_ms: now,
                ..token
            }
            .encode();
            let millis_behind_latest = if got.end_seq >= got.durable_seq {
                0
            } else {
                (now - last_arrival_ms(&got.bytes).unwrap_or(got.latest_ts_ms)).max(0) as u64
            };
            let head = GetRecordsHead {
                start_seq: got.start_seq,
                end_seq: got.end_seq,
                millis_behind_latest,
                next_iterator: Some(&next),
            };
            spate_protocol::read::encode_get_records_head(
                out,
                cid,
                &head,
                got.batch_count,
                got.bytes.len(),
            );
            out.extend_from_slice(&got.bytes);
        }
    }
    Ok(())
}

/// A put's outcome as the wire reports it: a stored prefix (maybe with the rest throttled),
/// a wholly throttled batch, or an error for the whole batch.
fn put_batch_response(
    shard_id: u32,
    result: Result<PutOutcome, EngineError>,
) -> Result<PutBatchResponse, EngineError> {
    match result {
        Ok(o) => Ok(PutBatchResponse {
            shard_id: o.shard_id,
            base_seq: o.base_seq,
            accepted: o.accepted,
            rejected: o
                .retry_after_ms
                .filter(|_| o.accepted < o.record_count)
                .map(|retry_after_ms| Rejection {
                    code: ErrorCode::Throttled,
                    retry_after_ms,
                }),
        }),
        Err(EngineError::Throttled { retry_after_ms }) => Ok(PutBatchResponse {
            shard_id,
            base_seq: 0,
            accepted: 0,
            rejected: Some(Rejection {
                code: ErrorCode::Throttled,
                retry_after_ms,
            }),
        }),
        Err(e) => Err(e),
    }
}

/// Arrival time of the last batch in a read's concatenated stored batches.
fn last_arrival_ms(bytes: &[u8]) -> Option<i64> {
    let mut pos = 0;
    let mut last = None;
    while bytes.len() - pos >= BATCH_HEADER_LEN {
        let h = BatchHeader::decode(&bytes[pos..]).ok()?;
        last = Some(h.last_ts_ms);
        pos += h.batch_len as usize;
    }
    last
}
