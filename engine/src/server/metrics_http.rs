//! The metrics endpoint: `GET /metrics` over HTTP/1.1 on `metrics_listen`, answered by a
//! thread of its own (never an engine core) with every core's counters merged and encoded
//! in the Prometheus text format (`crate::metrics`): OpenMetrics when the scraper's
//! `Accept` asks for it (Prometheus does), else the classic `text/plain; version=0.0.4`;
//! `HEAD` too, and a query string is ignored. With TLS configured it speaks HTTPS only,
//! with the listeners' certificate (and client CAs), through blocking rustls.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::metrics::MetricsSnapshot;
use crate::runtime::{call, CoreMsg};

/// Longest request head read, and how long a client may take to send it (and, over TLS,
/// to complete its handshake first): one client at a time is answered.
const MAX_HEAD_BYTES: usize = 8 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoint's thread; stopped (and its port closed) by `stop`.
pub(crate) struct MetricsEndpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Starts answering on `listen`; over TLS with `tls`.
    pub(crate) fn start(
        listen: SocketAddr,
        engine: Engine,
        tls: Option<Arc<ServerConfig>>,
    ) -> Result<MetricsEndpoint, EngineError> {
        let listener = TcpListener::bind(listen).map_err(|e| {
            EngineError::Startup(format!("cannot listen for metrics on {listen}: {e}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| EngineError::Startup(format!("metrics listener address: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spate-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    match conn {
                        Ok(conn) => {
                            let peer = conn.peer_addr().ok();
                            if let Err(e) = serve(conn, &engine, tls.as_ref()) {
                                tracing::debug!(peer = %super::Peer(peer), error = %e, "metrics request failed");
                            }
                        }
                        // Out of descriptors, most likely: not a busy loop.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
            .map_err(|e| EngineError::Startup(format!("cannot start the metrics thread: {e}")))?;
        Ok(MetricsEndpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocked accept, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every core's counters, added up.
pub(crate) fn gather(engine: &Engine) -> MetricsSnapshot {
    let mut all = MetricsSnapshot::default();
    for i in 0..engine.core_cpus().len() {
        let one = futures_lite::future::block_on(call(engine.core_sender(i), |reply| {
            CoreMsg::Metrics { reply }
        }));
        if let Ok(one) = one {
            all.merge(&one);
        }
    }
    all
}

/// Answers one connection: over TLS after its handshake, which must finish, like the
/// request head, within `HEAD_TIMEOUT`.
fn serve(conn: TcpStream, engine: &Engine, tls: Option<&Arc<ServerConfig>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(HEAD_TIMEOUT))?;
    conn.set_write_timeout(Some(HEAD_TIMEOUT))?;
    let Some(tls) = tls else {
        return answer(conn, engine);
    };
    let session = ServerConnection::new(tls.clone()).map_err(std::io::Error::other)?;
    let mut stream = StreamOwned::new(session, conn);
    let deadline = Instant::now() + HEAD_TIMEOUT;
    while stream.conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS handshake took too long",
            ));
        }
        stream.conn.complete_io(&mut stream.sock)?;
    }
    answer(&mut stream, engine)?;
    // A close_notify, so the client knows the body is whole.
    stream.conn.send_close_notify();
    stream.conn.complete_io(&mut stream.sock)?;
    Ok(())
}

/// Reads one request head and answers it; one request per connection.
fn answer(mut conn: impl Read + Write, engine: &Engine) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD_BYTES {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    // A query string (`/metrics?x=1`, as some scrapers add) does not change the answer.
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    // OpenMetrics when the scraper asks for it (Prometheus does), else the classic text
    // format every other scraper reads.
    let openmetrics = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .any(|(_, value)| {
            // A media range of it, not refused with `q=0`.
            value.to_ascii_lowercase().split(',').any(|range| {
                let mut params = range.split(';').map(str::trim);
                params.next() == Some("application/openmetrics-text")
                    && !params.any(|p| {
                        p.strip_prefix("q=")
                            .and_then(|q| q.parse::<f64>().ok())
                            .is_some_and(|q| q == 0.0)
                    })
            })
        });
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let text = gather(engine).encode();
            if openmetrics {
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                )
            } else {
                (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::metrics::to_prometheus_text(&text),
                )
            }
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".to_string(),
        ),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )?;
    // HEAD: the headers GET would send, without the body.
    if method != "HEAD" {
        conn.write_all(body.as_bytes())?;
    }
    conn.flush()
}
