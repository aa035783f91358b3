//! The network server: every engine core accepts connections and serves the wire protocol.
//!
//! Two halves: [`transport`] owns sockets — listeners, connections, framing and every bound
//! a client's behaviour could otherwise turn into unbounded memory or a stuck core — and
//! [`handlers`] turns one decoded request into engine calls and one encoded response, one
//! function per command.
//!
//! Listening: each core binds the public address with SO_REUSEPORT (the kernel spreads
//! connections over the cores) and its own advertised address, which `Hello` reports so a
//! shard-aware client can talk straight to the core that owns a shard. With a certificate
//! configured ([`tls`]), every one of those listeners and the metrics endpoint speak TLS
//! only; the handshake runs in the connection's task on the core that accepted it.
//!
//! Data flow for a put (see ARCHITECTURE.md): the connection's reader task reads the socket
//! into a buffer, splits off each complete frame without copying (`bytes::BytesMut`), and
//! spawns one task per request, so a put waiting for its fdatasync never holds up the next
//! request on the connection (pipelining). A request for a local shard calls the shard
//! directly; one for another core's shard is forwarded over that core's bounded channel
//! (the batch is copied once into the message). Responses are appended to the
//! connection's outbox and written by its writer task; the correlation id matches them.
//!
//! Concurrency contract: everything here runs on the core that accepted the connection;
//! the only cross-thread step is the forward to another core's channel.

mod handlers;
mod tls;
mod transport;

pub use handlers::error_code;
pub use transport::NetStats;
mod metrics_http;

pub(crate) use transport::{close_connections, drain_requests, listen, stop_accepting, NetState};

use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::runtime::{call, CoreMsg};

/// A running server: the engine plus its listeners.
pub struct Server {
    engine: Engine,
    public: SocketAddr,
    cores: Vec<SocketAddr>,
    metrics: Option<metrics_http::MetricsEndpoint>,
    tls: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("public", &self.public)
            .field("cores", &self.cores)
            .field("tls", &self.tls)
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
        let metrics_listen = match cfg.metrics_listen.as_str() {
            "" | "off" => None,
            addr => Some(resolve(addr)?),
        };
        cfg.validate().map_err(EngineError::Startup)?;
        // Read and checked before any core starts: a missing or invalid file is one error
        // naming it. Each core builds its own configuration from the same files (`tls`).
        let tls = tls::ServerTls::load(&cfg)?;
        let mutual_tls = cfg.tls_client_ca_file.is_some();
        // Checked before the engine starts (and recovers every shard) for nothing.
        let n = crate::engine::engine_cpus(&cfg)?.len();
        if listen.port() != 0 && usize::from(listen.port()) + n > usize::from(u16::MAX) {
            return Err(EngineError::Startup(format!(
                "listen port {} leaves no room for the {n} cores' own ports (the listen port + 1 + each core's index, at most 65535)",
                listen.port()
            )));
        }
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
        let metrics = match metrics_listen {
            Some(addr) => {
                let m = metrics_http::MetricsEndpoint::start(
                    addr,
                    engine.clone(),
                    tls.as_ref().map(tls::ServerTls::config),
                )?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!("metrics at {scheme}://{}/metrics", m.addr());
                Some(m)
            }
            None => None,
        };
        let addrs: Vec<String> = cores.iter().map(|a| a.to_string()).collect();
        let metrics_address = metrics.as_ref().map(|m| m.addr().to_string());
        for i in 0..n {
            let addrs = addrs.clone();
            let metrics = metrics_address.clone();
            futures_lite::future::block_on(call(engine.core_sender(i), |reply| {
                CoreMsg::SetTopology {
                    addrs,
                    metrics,
                    reply,
                }
            }))?;
        }
        let core_ports = cores
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(%public, cores = %core_ports, tls = tls.is_some(), mutual_tls, "listening");
        Ok(Server {
            engine,
            public,
            cores,
            metrics,
            tls: tls.is_some(),
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        self.engine.config()
    }

    /// Whether every listener (and the metrics endpoint) speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls
    }

    /// The public address (every core accepts there).
    pub fn local_addr(&self) -> SocketAddr {
        self.public
    }

    /// Where `GET /metrics` is answered, unless metrics are off (`metrics_listen = ""`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    /// Every core's counters, added up (what the metrics endpoint encodes).
    pub fn metrics(&self) -> crate::metrics::MetricsSnapshot {
        metrics_http::gather(&self.engine)
    }

    /// Each core's own advertised address, by core index.
    pub fn core_addrs(&self) -> Vec<SocketAddr> {
        self.cores.clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Each core's network accounting (connections, held request and response bytes,
    /// parked long-polls): what the bounds in ARCHITECTURE.md's table are measured by.
    pub fn net_stats(&self) -> Vec<NetStats> {
        (0..self.cores.len())
            .map(|i| {
                futures_lite::future::block_on(call(self.engine.core_sender(i), |reply| {
                    CoreMsg::NetStats { reply }
                }))
                .unwrap_or_default()
            })
            .collect()
    }

    /// Stops accepting, drains in-flight requests, flushes every shard and stops the cores.
    pub fn shutdown(mut self) {
        if let Some(mut m) = self.metrics.take() {
            m.stop();
        }
        self.engine.shutdown();
    }
}

/// A peer's address for logs: `127.0.0.1:50800`, or `unknown` (not Rust's
/// `Some(127.0.0.1:50800)`, which JSON logs carried as text).
pub(crate) struct Peer(pub Option<std::net::SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("unknown"),
        }
    }
}
