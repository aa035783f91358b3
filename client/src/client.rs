//! The [`Client`]: connections to the engine's cores, stream administration, single puts
//! and the low-level read calls. Batch puts live in `put`, the [`crate::Producer`] in
//! `producer`, the [`crate::ShardReader`] in `reader`.

use spate_protocol::StreamStatus;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spate_protocol::batch::BatchBuilder;
use spate_protocol::stream::{
    is_valid_retention_hours, is_valid_stream_name, MAX_SHARDS_PER_STREAM,
};
use spate_protocol::{
    encode_put_batch_head, encode_put_batches_head, encode_put_record_head, encode_request,
    CreateStreamRequest, DeleteStreamRequest, DescribeStreamRequest, EncryptionType, ErrorCode,
    GetIteratorRequest, GetRecordsRequest, HelloRequest, IteratorPosition, Limits,
    ListStreamsRequest, Opcode, PutBatchResponse, Request, Response, RetentionRequest,
    RotateKeysResponse, ShardDescription, ShardOutcome, StreamEncryptionRequest, PROTOCOL_VERSION,
};

use crate::connection::{decode_reply, Connection, Tls, DEFAULT_MAX_IN_FLIGHT};
use crate::error::{ClientError, Result};
use crate::put::{check_record, PutResult, RecordView};
use crate::retry::RetryPolicy;
use crate::routing::{ShardMap, ShardRoute};

/// How a [`Client`] connects, times out and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Sent in the hello, for the server's logs.
    pub client_name: String,
    pub connect_timeout: Duration,
    /// How long to wait for a response (a long-poll's `wait_ms` is added to it).
    pub request_timeout: Duration,
    /// Outstanding requests per connection; a request past it waits for a slot.
    pub max_in_flight_per_connection: usize,
    /// Send each shard's requests straight to the core owning it (its advertised address).
    /// When off, or when a core's address cannot be reached, requests go to the address
    /// the client connected to and the server forwards them.
    pub shard_aware: bool,
    /// Retries of requests the server refused without applying them (throttled, busy).
    pub retry: RetryPolicy,
    /// Speak TLS on every connection (the bootstrap one, each core's, subscriptions'):
    /// `None` is plaintext, and fails against a server that requires TLS.
    pub tls: Option<TlsOptions>,
    /// Authenticate every connection as this principal (challenge–response: the secret
    /// never travels). `None`: unauthenticated, which a server with authentication on
    /// refuses (unless a TLS client certificate names a principal).
    pub credentials: Option<crate::auth::Credentials>,
}

/// PEM text: a file to read when the client connects, or the text itself.
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for Pem {
    /// A key's bytes never reach a log: only a file's name or the text's length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(path) => f.debug_tuple("File").field(path).finish(),
            Pem::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
        }
    }
}

impl Pem {
    fn read(&self, what: &str) -> Result<Vec<u8>> {
        match self {
            Pem::Bytes(bytes) => Ok(bytes.clone()),
            Pem::File(path) => std::fs::read(path).map_err(|e| ClientError::Config {
                message: format!("cannot read {what} {}: {e}", path.display()),
            }),
        }
    }

    fn name(&self) -> String {
        match self {
            Pem::File(path) => path.display().to_string(),
            Pem::Bytes(_) => "(given as text)".to_string(),
        }
    }
}

/// A client certificate chain and its private key, for a server that requires one
/// (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The client's certificate first, then any intermediates.
    pub chain: Pem,
    /// PKCS#8, PKCS#1 or SEC1.
    pub key: Pem,
}

/// How a [`Client`] speaks TLS (rustls, with the ring provider).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The certificate authorities the server's certificate must chain to, and only
    /// these. `None`: the system's bundle (`SSL_CERT_FILE`, or the distribution's usual
    /// file).
    pub ca: Option<Pem>,
    /// The name the server's certificate must carry: a DNS name or an IP address. `None`:
    /// the host of the address given to [`Client::connect_with`], for every connection,
    /// those to the cores' own addresses included (they are the same server).
    pub server_name: Option<String>,
    /// Presented when the server asks (mutual TLS).
    pub client_cert: Option<ClientCert>,
}

/// Where distributions keep their CA bundle, tried in order when no CA is given.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

impl TlsOptions {
    /// TLS trusting the CA certificates in the PEM file `ca`.
    pub fn with_ca_file(ca: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            ca: Some(Pem::File(ca.into())),
            ..TlsOptions::default()
        }
    }

    /// The rustls configuration these options describe: files are read now, and an
    /// unreadable or invalid one is a [`ClientError::Config`] naming it.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |message: String| ClientError::Config { message };
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in read_certs(ca, "CA file")? {
                    roots.add(cert).map_err(|e| {
                        bad(format!(
                            "CA file {}: not a usable CA certificate: {e}",
                            ca.name()
                        ))
                    })?;
                }
            }
            None => {
                let bundle = std::env::var_os("SSL_CERT_FILE")
                    .map(PathBuf::from)
                    .or_else(|| {
                        SYSTEM_CA_BUNDLES
                            .iter()
                            .map(Path::new)
                            .find(|p| p.is_file())
                            .map(Path::to_path_buf)
                    })
                    .ok_or_else(|| {
                        bad("no CA given and no system CA bundle found: give the server's CA (--ca FILE)".into())
                    })?;
                // A system bundle may hold certificates webpki cannot use; those are skipped.
                let (added, _) = roots.add_parsable_certificates(read_certs(
                    &Pem::File(bundle.clone()),
                    "CA bundle",
                )?);
                if added == 0 {
                    return Err(bad(format!(
                        "CA bundle {}: no usable certificate in it",
                        bundle.display()
                    )));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS protocol versions: {e}")))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some(cert) => {
                let chain: Vec<CertificateDer<'static>> =
                    read_certs(&cert.chain, "client certificate")?;
                let pem = cert.key.read("client key")?;
                let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    bad(format!(
                        "client key {}: no usable PEM private key: {e}",
                        cert.key.name()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    bad(format!(
                        "client certificate {} with key {}: {e}",
                        cert.chain.name(),
                        cert.key.name()
                    ))
                })?
            }
        };
        Ok(Arc::new(config))
    }

    /// The name a server reached at `addr` ("host:port") must show in its certificate:
    /// [`TlsOptions::server_name`], else the host of `addr` (`[v6]:port` too).
    pub fn server_name_for(&self, addr: &str) -> Result<rustls::pki_types::ServerName<'static>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_string(),
        };
        rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| ClientError::Config {
            message: format!("TLS server name {name:?}: {e}"),
        })
    }
}

/// The host part of "host:port", "[v6]:port" or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has more than one colon: no port to cut.
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

/// Every certificate in a PEM source; at least one.
fn read_certs(pem: &Pem, what: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let text = pem.read(what)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&text)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config {
            message: format!("{what} {}: invalid PEM: {e}", pem.name()),
        })?;
    if certs.is_empty() {
        return Err(ClientError::Config {
            message: format!("{what} {}: no PEM certificate in it", pem.name()),
        });
    }
    Ok(certs)
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: concat!("spate-client/", env!("CARGO_PKG_VERSION")).to_string(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_in_flight_per_connection: DEFAULT_MAX_IN_FLIGHT,
            shard_aware: true,
            retry: RetryPolicy::default(),
            tls: None,
            credentials: None,
        }
    }
}

/// What the server said about itself in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub protocol_version: u8,
    pub max_frame_bytes: u32,
    /// Every engine core and its advertised "host:port".
    pub cores: Vec<(u16, String)>,
    /// "host:port" of the server's metrics endpoint (`GET /metrics`), if it has one.
    pub metrics_address: Option<String>,
    /// Whether the server answers only authenticated connections.
    pub auth_required: bool,
    /// Who this client is authenticated as (by its credentials or TLS certificate).
    pub principal: Option<String>,
}

/// Settings of a new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    pub shards: u32,
    pub retention_hours: u32,
    pub limits: Limits,
    /// Per-record data limit; `None`: 1 MiB. At most 10 MiB.
    pub max_record_data_bytes: Option<u32>,
    /// How the records are kept at rest; `Aes256Gcm` needs a server with a key file (else
    /// it answers `KeyUnavailable`).
    pub encryption: EncryptionType,
}

impl StreamConfig {
    /// `shards` shards, 24 h retention, Kinesis limits, 1 MiB records, not encrypted.
    pub fn new(shards: u32) -> StreamConfig {
        StreamConfig {
            shards,
            retention_hours: spate_protocol::stream::DEFAULT_RETENTION_HOURS,
            limits: Limits::Kinesis,
            max_record_data_bytes: None,
            encryption: EncryptionType::None,
        }
    }

    pub fn encryption(self, encryption: EncryptionType) -> StreamConfig {
        StreamConfig { encryption, ..self }
    }

    pub fn limits(self, limits: Limits) -> StreamConfig {
        StreamConfig { limits, ..self }
    }

    pub fn retention_hours(self, retention_hours: u32) -> StreamConfig {
        StreamConfig {
            retention_hours,
            ..self
        }
    }
}

/// A described stream (owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub name: String,
    pub stream_id: u64,
    pub status: StreamStatus,
    pub retention_hours: u32,
    pub limits: Limits,
    pub max_record_data_bytes: u32,
    /// When the stream was created (ms since the epoch).
    pub created_ms: i64,
    /// Open shards and closed parents still in retention.
    pub shards: Vec<ShardDescription>,
    pub mode: spate_protocol::CapacityMode,
    /// Raised by every split, merge and scale.
    pub map_version: u64,
    /// On-demand: the last scaling decision (when, what and why).
    pub last_scaling: Option<String>,
    /// Per-shard metrics are exported (enhanced shard-level monitoring).
    pub shard_level_metrics: bool,
    /// How records written from now on are kept at rest.
    pub encryption: EncryptionType,
    /// Data keys (key epochs) the stream has had, the current one included: one per start
    /// of encryption, engine start and rotation, all kept (0 for a stream never encrypted).
    pub key_epochs: u32,
    /// The master key the current data key is wrapped under; `None` when not encrypted.
    pub master_key_id: Option<u32>,
    /// On-demand: the most write capacity the engine may scale the stream to, in MiB/s;
    /// `None` when provisioned.
    pub max_write_mib_per_s: Option<u32>,
}

/// What a split, merge or scale did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reshard {
    /// The stream's shard-map version after the change.
    pub map_version: u64,
    /// The shards it opened, in hash-key order.
    pub new_shards: Vec<u32>,
}

/// Where a shard iterator starts; the protocol's positions.
pub type Position = IteratorPosition;

/// An opaque shard iterator, remembering which core serves its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIterator {
    token: Bytes,
    core: Option<u16>,
}

impl ShardIterator {
    /// An iterator from its raw token (e.g. saved by a consumer). Requests with it go to
    /// the address the client connected to.
    pub fn from_bytes(token: impl Into<Bytes>) -> ShardIterator {
        ShardIterator {
            token: token.into(),
            core: None,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.token
    }
}

/// One record read from a shard. `data` shares the response's buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// Arrival time, ms since the epoch (the engine's clock).
    pub ts_ms: i64,
    pub key: String,
    pub data: Bytes,
    pub explicit_hash_key: Option<u128>,
}

/// The answer to a get-records call, every batch verified end to end (both CRCs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    pub records: Vec<Record>,
    /// Where to read next; `None` once the shard is closed and fully read.
    pub next_iterator: Option<ShardIterator>,
    /// How far the last record returned is behind the shard's newest (0 at the tip).
    pub millis_behind_latest: u64,
    /// The sequence numbers this answer covers: `start_seq..end_seq`.
    pub start_seq: u64,
    pub end_seq: u64,
    /// Once the shard is closed and fully read (`next_iterator` is `None`): the shards that
    /// took over its keys, to read next (a merged child once both its parents are read).
    pub child_shards: Vec<u32>,
}

/// Which connection a request travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// The address the client was given.
    Bootstrap,
    /// The core owning the shard the request is about.
    Core(u16),
}

struct Inner {
    bootstrap: String,
    config: ClientConfig,
    /// Built once from `config.tls`, for every connection.
    tls: Option<Tls>,
    /// Keys derived from `config.credentials`, shared by every connection.
    keys: crate::auth::KeyCache,
    server: ServerInfo,
    pool: Mutex<HashMap<Target, Arc<Connection>>>,
    /// Serialises opening connections, so concurrent requests share one new connection.
    connecting: tokio::sync::Mutex<()>,
    streams: Mutex<HashMap<String, Arc<ShardMap>>>,
}

/// A connection to a Spate server: cheap to clone (clones share connections and caches),
/// usable from many tasks at once. Needs a tokio runtime (it spawns each connection's
/// reader and writer tasks). See the crate docs for the concurrency model.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.bootstrap)
            .field("server", &self.inner.server)
            .finish()
    }
}

/// Opens a connection to `addr` (TLS as configured) and, with credentials, authenticates
/// it; answers the principal it is authenticated as.
async fn open_authenticated(
    addr: &str,
    label: &str,
    config: &ClientConfig,
    tls: Option<&Tls>,
    keys: &crate::auth::KeyCache,
) -> Result<(Connection, Option<String>)> {
    let conn = Connection::open(
        addr,
        label,
        config.connect_timeout,
        config.max_in_flight_per_connection,
        tls,
    )
    .await?;
    let principal = match &config.credentials {
        Some(creds) => {
            Some(crate::auth::authenticate(&conn, creds, keys, config.request_timeout).await?)
        }
        None => None,
    };
    Ok((conn, principal))
}

async fn open_connection(
    addr: &str,
    label: &str,
    config: &ClientConfig,
    tls: Option<&Tls>,
    keys: &crate::auth::KeyCache,
) -> Result<Connection> {
    open_authenticated(addr, label, config, tls, keys)
        .await
        .map(|(c, _)| c)
}

impl Client {
    /// Connects to `addr` ("host:port") with the default configuration and says hello.
    pub async fn connect(addr: impl Into<String>) -> Result<Client> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects to `addr`, says hello, and learns the server's cores and frame limit. With
    /// [`ClientConfig::tls`], its files are read here (a bad one is
    /// [`ClientError::Config`]), and a failed handshake is [`ClientError::Connect`] with
    /// rustls' reason.
    pub async fn connect_with(addr: impl Into<String>, config: ClientConfig) -> Result<Client> {
        let bootstrap = addr.into();
        let tls = match &config.tls {
            // Reads files (and may parse the system's CA bundle): off the async workers.
            Some(options) => {
                let (options, addr) = (options.clone(), bootstrap.clone());
                let built = tokio::task::spawn_blocking(move || Tls::new(&options, &addr))
                    .await
                    .map_err(|e| ClientError::Config {
                        message: format!("loading the TLS configuration failed: {e}"),
                    })??;
                Some(built)
            }
            None => None,
        };
        let keys = crate::auth::KeyCache::default();
        let (conn, authenticated) =
            open_authenticated(&bootstrap, &bootstrap, &config, tls.as_ref(), &keys).await?;
        let req = Request::Hello(HelloRequest {
            client_name: &config.client_name,
        });
        let frame = conn
            .call(
                |out, id| encode_request(out, id, &req),
                Bytes::new(),
                config.request_timeout,
            )
            .await?;
        let Response::Hello(hello) = decode_reply(&frame, Some(Opcode::Hello))? else {
            unreachable!("decode_reply checked the opcode")
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "server speaks protocol {}, this client {PROTOCOL_VERSION}",
                    hello.protocol_version
                ),
            });
        }
        let server = ServerInfo {
            protocol_version: hello.protocol_version,
            max_frame_bytes: hello.max_frame_bytes,
            cores: hello
                .cores
                .iter()
                .map(|c| (c.core_id, c.address.to_string()))
                .collect(),
            metrics_address: hello.metrics_address.map(str::to_string),
            auth_required: hello.auth_required,
            principal: authenticated.or_else(|| hello.principal.map(str::to_string)),
        };
        if server.auth_required && server.principal.is_none() {
            return Err(ClientError::Config {
                message: format!(
                    "{bootstrap} answers only authenticated clients: give an access key id and secret (--access-key-id and --secret-file, or SPATE_ACCESS_KEY_ID and SPATE_SECRET) or a client certificate that names a principal"
                ),
            });
        }
        conn.set_max_request_bytes(u64::from(server.max_frame_bytes));
        tracing::debug!(addr = %bootstrap, ?server, "connected");
        let pool = HashMap::from([(Target::Bootstrap, Arc::new(conn))]);
        Ok(Client {
            inner: Arc::new(Inner {
                bootstrap,
                config,
                tls,
                keys,
                server,
                pool: Mutex::new(pool),
                connecting: tokio::sync::Mutex::new(()),
                streams: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn server_info(&self) -> &ServerInfo {
        &self.inner.server
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The live connection for `target`, opening one if there is none or it broke. A core
    /// that cannot be reached at its advertised address is served through the bootstrap
    /// connection (the server forwards).
    async fn conn(&self, target: Target) -> Result<Arc<Connection>> {
        let target = if self.inner.config.shard_aware {
            target
        } else {
            Target::Bootstrap
        };
        if let Some(c) = self.pooled(target) {
            return Ok(c);
        }
        let _opening = self.inner.connecting.lock().await;
        if let Some(c) = self.pooled(target) {
            return Ok(c);
        }
        let cfg = &self.inner.config;
        let addr = match target {
            Target::Bootstrap => self.inner.bootstrap.clone(),
            Target::Core(core) => match self.inner.server.cores.iter().find(|c| c.0 == core) {
                Some((_, addr)) => addr.clone(),
                None => self.inner.bootstrap.clone(),
            },
        };
        // Errors name the address the user gave first: per-core ports are the server's own.
        let label = match target {
            Target::Core(core) if addr != self.inner.bootstrap => {
                format!("{} (core {core} at {addr})", self.inner.bootstrap)
            }
            _ => addr.clone(),
        };
        let tls = self.inner.tls.as_ref();
        let opened = open_connection(&addr, &label, cfg, tls, &self.inner.keys)
            .await
            .map(Arc::new);
        let conn = match (opened, target) {
            (Ok(c), _) => c,
            (Err(e), Target::Core(core)) => {
                tracing::debug!(core, error = %e, "core unreachable; going through the bootstrap address");
                match self.pooled(Target::Bootstrap) {
                    Some(c) => c,
                    None => Arc::new(
                        open_connection(
                            &self.inner.bootstrap,
                            &self.inner.bootstrap,
                            cfg,
                            tls,
                            &self.inner.keys,
                        )
                        .await?,
                    ),
                }
            }
            (Err(e), Target::Bootstrap) => return Err(e),
        };
        conn.set_max_request_bytes(u64::from(self.inner.server.max_frame_bytes));
        self.inner
            .pool
            .lock()
            .expect("pool lock")
            .insert(target, conn.clone());
        Ok(conn)
    }

    fn pooled(&self, target: Target) -> Option<Arc<Connection>> {
        let pool = self.inner.pool.lock().expect("pool lock");
        pool.get(&target).filter(|c| !c.is_closed()).cloned()
    }

    /// A new connection of its own to the core owning a shard (or to the bootstrap
    /// address), for a subscription: dropping it ends the subscription on the server.
    pub(crate) async fn dedicated_connection(&self, core: Option<u16>) -> Result<Connection> {
        let cfg = &self.inner.config;
        let addr = match core {
            Some(core) if cfg.shard_aware => self
                .inner
                .server
                .cores
                .iter()
                .find(|c| c.0 == core)
                .map_or_else(|| self.inner.bootstrap.clone(), |c| c.1.clone()),
            _ => self.inner.bootstrap.clone(),
        };
        let tls = self.inner.tls.as_ref();
        let opened =
            open_connection(&addr, &self.inner.bootstrap, cfg, tls, &self.inner.keys).await;
        let conn = match opened {
            Ok(c) => c,
            Err(_) if addr != self.inner.bootstrap => {
                open_connection(
                    &self.inner.bootstrap,
                    &self.inner.bootstrap,
                    cfg,
                    tls,
                    &self.inner.keys,
                )
                .await?
            }
            Err(e) => return Err(e),
        };
        conn.set_max_request_bytes(u64::from(self.inner.server.max_frame_bytes));
        Ok(conn)
    }

    fn timeout(&self, wait_ms: u32) -> Duration {
        self.inner.config.request_timeout + Duration::from_millis(u64::from(wait_ms))
    }

    /// Sends a request without a batch and returns the response frame.
    pub(crate) async fn request(
        &self,
        target: Target,
        req: &Request<'_>,
        wait_ms: u32,
    ) -> Result<Bytes> {
        let conn = self.conn(target).await?;
        conn.call(
            |out, id| encode_request(out, id, req),
            Bytes::new(),
            self.timeout(wait_ms),
        )
        .await
    }

    // ---- stream administration -------------------------------------------------------

    /// Creates a stream and waits until it is ACTIVE (a big one answers CREATING first);
    /// returns its incarnation id.
    pub async fn create_stream(&self, name: &str, config: &StreamConfig) -> Result<u64> {
        let (stream_id, status) = self.start_create_stream(name, config).await?;
        if status != StreamStatus::Active {
            self.wait_for_active(name, None).await?;
        }
        Ok(stream_id)
    }

    /// Waits until `name` is ACTIVE, describing it every 50 ms to 1 s; fails with the
    /// describe's error (UnknownStream when a create failed and was undone) or, past
    /// `timeout`, with `Timeout`.
    pub async fn wait_for_active(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<StreamInfo> {
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let info = self.describe_stream(name).await?;
            if info.status == StreamStatus::Active {
                return Ok(info);
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                return Err(ClientError::Timeout {
                    addr: self.inner.bootstrap.clone(),
                    timeout_ms: start.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Creates a stream and returns at once with its incarnation id and status: `Active`,
    /// or `Creating` when the server answered before every shard was made (see
    /// [`Client::wait_for_active`]).
    pub async fn start_create_stream(
        &self,
        name: &str,
        config: &StreamConfig,
    ) -> Result<(u64, StreamStatus)> {
        check_stream_name(name)?;
        if config.shards == 0 || config.shards > MAX_SHARDS_PER_STREAM {
            return Err(ClientError::invalid(
                ErrorCode::InvalidArgument,
                format!(
                    "shard count {} is not in 1..={MAX_SHARDS_PER_STREAM}",
                    config.shards
                ),
            ));
        }
        check_retention(config.retention_hours)?;
        let req = Request::CreateStream(CreateStreamRequest {
            name,
            shard_count: config.shards,
            retention_hours: config.retention_hours,
            limits: config.limits,
            max_record_data_bytes: config.max_record_data_bytes,
            encryption: config.encryption,
        });
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        self.forget_stream(name);
        match decode_reply(&frame, Some(Opcode::CreateStream))? {
            Response::CreateStream(r) => Ok((r.stream_id, r.status)),
            _ => unreachable!("decode_reply checked the opcode"),
        }
    }

    /// Deletes a stream and all its records.
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        check_stream_name(name)?;
        let req = Request::DeleteStream(DeleteStreamRequest { name });
        let frame = self.request(Target::Bootstrap, &req, 0).await;
        self.forget_stream(name);
        decode_reply(&frame?, Some(Opcode::DeleteStream)).map(|_| ())
    }

    /// Every stream name, in ascending order (follows the server's pagination).
    pub async fn list_streams(&self) -> Result<Vec<String>> {
        const PAGE: u32 = 1000;
        let mut names: Vec<String> = Vec::new();
        loop {
            let req = Request::ListStreams(ListStreamsRequest {
                exclusive_start_name: names.last().map(String::as_str),
                limit: PAGE,
            });
            let frame = self.request(Target::Bootstrap, &req, 0).await?;
            let Response::ListStreams(page) = decode_reply(&frame, Some(Opcode::ListStreams))?
            else {
                unreachable!("decode_reply checked the opcode")
            };
            let progressed = !page.names.is_empty();
            names.extend(page.names.iter().map(|n| n.to_string()));
            if !page.has_more || !progressed {
                return Ok(names);
            }
        }
    }

    /// A stream's settings and shards. Also refreshes the client's routing table for it.
    pub async fn describe_stream(&self, name: &str) -> Result<StreamInfo> {
        let (info, _) = self.describe(name).await?;
        Ok(info)
    }

    async fn describe(&self, name: &str) -> Result<(StreamInfo, Arc<ShardMap>)> {
        check_stream_name(name)?;
        let req = Request::DescribeStream(DescribeStreamRequest { name });
        let frame = self.request(Target::Bootstrap, &req, 0).await;
        let frame = frame.inspect_err(|e| self.forget_on(name, e))?;
        let reply = decode_reply(&frame, Some(Opcode::DescribeStream));
        let Response::DescribeStream(d) = reply.inspect_err(|e| self.forget_on(name, e))? else {
            unreachable!("decode_reply checked the opcode")
        };
        let map = Arc::new(ShardMap::from_description(&d));
        self.inner
            .streams
            .lock()
            .expect("streams lock")
            .insert(name.to_string(), map.clone());
        let info = StreamInfo {
            name: d.name.to_string(),
            stream_id: d.stream_id,
            status: d.status,
            retention_hours: d.retention_hours,
            limits: d.limits,
            max_record_data_bytes: d.max_record_data_bytes,
            created_ms: d.created_ms,
            shards: d.shards.clone(),
            mode: d.mode,
            map_version: d.map_version,
            last_scaling: d.last_scaling.map(str::to_string),
            shard_level_metrics: d.shard_level_metrics,
            encryption: d.encryption,
            key_epochs: d.key_epochs,
            master_key_id: d.master_key_id,
            max_write_mib_per_s: d.max_write_mib_per_s,
        };
        Ok((info, map))
    }

    /// Raises a stream's retention window to `hours`.
    pub async fn increase_retention(&self, name: &str, hours: u32) -> Result<()> {
        self.retention(name, hours, true).await
    }

    /// Lowers a stream's retention window to `hours`.
    pub async fn decrease_retention(&self, name: &str, hours: u32) -> Result<()> {
        self.retention(name, hours, false).await
    }

    async fn retention(&self, name: &str, hours: u32, increase: bool) -> Result<()> {
        check_stream_name(name)?;
        check_retention(hours)?;
        let body = RetentionRequest {
            name,
            retention_hours: hours,
        };
        let (req, op) = if increase {
            (Request::IncreaseRetention(body), Opcode::IncreaseRetention)
        } else {
            (Request::DecreaseRetention(body), Opcode::DecreaseRetention)
        };
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        decode_reply(&frame, Some(op)).map(|_| ())
    }

    /// Kinesis' SplitShard: `shard_id`'s keys below `new_starting_hash_key` go to one new
    /// shard, the rest to another; the parent is closed (readable until retention removes
    /// its records).
    pub async fn split_shard(
        &self,
        stream: &str,
        shard_id: u32,
        new_starting_hash_key: u128,
    ) -> Result<Reshard> {
        check_stream_name(stream)?;
        let req = Request::SplitShard(spate_protocol::SplitShardRequest {
            name: stream,
            shard_id,
            new_starting_hash_key,
        });
        self.reshard(stream, &req, Opcode::SplitShard).await
    }

    /// Kinesis' MergeShards: two open shards whose hash-key ranges touch become one.
    pub async fn merge_shards(
        &self,
        stream: &str,
        shard_id: u32,
        adjacent_shard_id: u32,
    ) -> Result<Reshard> {
        check_stream_name(stream)?;
        let req = Request::MergeShards(spate_protocol::MergeShardsRequest {
            name: stream,
            shard_id,
            adjacent_shard_id,
        });
        self.reshard(stream, &req, Opcode::MergeShards).await
    }

    /// Kinesis' UpdateShardCount with uniform scaling: `target` open shards with even
    /// hash-key ranges afterwards, by splits and merges.
    pub async fn update_shard_count(&self, stream: &str, target: u32) -> Result<Reshard> {
        check_stream_name(stream)?;
        let req = Request::UpdateShardCount(spate_protocol::UpdateShardCountRequest {
            name: stream,
            target_shard_count: target,
        });
        self.reshard(stream, &req, Opcode::UpdateShardCount).await
    }

    /// Kinesis' UpdateStreamMode: provisioned (the owner chooses the shards) or on-demand
    /// (the engine splits and merges from the write rate it sees; at least 4 shards), with
    /// an on-demand stream's ceiling in MiB/s (`None`: as it was, by default the server's).
    pub async fn update_stream_mode(
        &self,
        stream: &str,
        mode: spate_protocol::CapacityMode,
        max_write_mib_per_s: Option<u32>,
    ) -> Result<()> {
        check_stream_name(stream)?;
        let req = Request::UpdateStreamMode(spate_protocol::UpdateStreamModeRequest {
            name: stream,
            mode,
            max_write_mib_per_s,
        });
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        self.forget_stream(stream);
        decode_reply(&frame, Some(Opcode::UpdateStreamMode)).map(|_| ())
    }

    /// Kinesis' Enable/DisableEnhancedMonitoring: the server exports the stream's metrics
    /// per shard too (labelled `shard`), or stops.
    pub async fn set_shard_level_metrics(&self, stream: &str, on: bool) -> Result<()> {
        check_stream_name(stream)?;
        let name = DescribeStreamRequest { name: stream };
        let (req, op) = if on {
            (
                Request::EnableEnhancedMonitoring(name),
                Opcode::EnableEnhancedMonitoring,
            )
        } else {
            (
                Request::DisableEnhancedMonitoring(name),
                Opcode::DisableEnhancedMonitoring,
            )
        };
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        decode_reply(&frame, Some(op)).map(|_| ())
    }

    /// Kinesis' StartStreamEncryption: records written to `stream` from now on are sealed
    /// with AES-256-GCM under a new data key of the stream, wrapped under the server's
    /// current master key. Records already stored stay as they are. A server without a key
    /// file answers `KeyUnavailable`.
    pub async fn start_stream_encryption(&self, stream: &str) -> Result<()> {
        self.stream_encryption(stream, true).await
    }

    /// Kinesis' StopStreamEncryption: records written to `stream` from now on are stored in
    /// the clear. Sealed records stay sealed, and readable while their data keys are kept.
    pub async fn stop_stream_encryption(&self, stream: &str) -> Result<()> {
        self.stream_encryption(stream, false).await
    }

    async fn stream_encryption(&self, stream: &str, start: bool) -> Result<()> {
        check_stream_name(stream)?;
        // Stop names the type being stopped, as Kinesis' does: the only one there is.
        let body = StreamEncryptionRequest {
            name: stream,
            encryption: EncryptionType::Aes256Gcm,
        };
        let (req, op) = if start {
            (
                Request::StartStreamEncryption(body),
                Opcode::StartStreamEncryption,
            )
        } else {
            (
                Request::StopStreamEncryption(body),
                Opcode::StopStreamEncryption,
            )
        };
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        decode_reply(&frame, Some(op)).map(|_| ())
    }

    /// Rotates the keys of encryption at rest: the server re-reads its key file and moves
    /// to its current master key (the highest id, which may have just been appended); every
    /// encrypted stream gets a new data key wrapped under it. Older data keys stay until the
    /// records they seal leave retention. Answers that master key's id and how many
    /// streams got a new data key.
    pub async fn rotate_keys(&self) -> Result<RotateKeysResponse> {
        let frame = self
            .request(Target::Bootstrap, &Request::RotateKeys, 0)
            .await?;
        match decode_reply(&frame, Some(Opcode::RotateKeys))? {
            Response::RotateKeys(r) => Ok(r),
            _ => unreachable!("decode_reply checked the opcode"),
        }
    }

    async fn reshard(&self, stream: &str, req: &Request<'_>, op: Opcode) -> Result<Reshard> {
        let frame = self.request(Target::Bootstrap, req, 0).await?;
        // Whatever the answer, this client's routes for the stream are stale now.
        self.forget_stream(stream);
        match decode_reply(&frame, Some(op))? {
            Response::SplitShard(r) | Response::MergeShards(r) | Response::UpdateShardCount(r) => {
                Ok(Reshard {
                    map_version: r.map_version,
                    new_shards: r.new_shards,
                })
            }
            _ => unreachable!("decode_reply checked the opcode"),
        }
    }

    /// The stream's routing table, described again unless the cached one is at least
    /// `version` (what a `ShardClosed` error named). Waits out a server that has closed a
    /// shard but not yet published the new routes (a few ms), up to about two seconds.
    pub(crate) async fn shard_map_at_least(
        &self,
        stream: &str,
        version: u64,
    ) -> Result<Arc<ShardMap>> {
        let map = self.shard_map(stream).await?;
        if map.map_version >= version {
            return Ok(map);
        }
        let mut pause = Duration::from_millis(2);
        for _ in 0..12 {
            let (_, map) = self.describe(stream).await?;
            if map.map_version >= version {
                return Ok(map);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        Err(ClientError::ShardClosed {
            shard_map_version: version,
            message: format!("stream {stream:?} still does not show shard-map version {version}"),
        })
    }

    /// The stream's routing table: cached, or described now.
    pub async fn shard_map(&self, stream: &str) -> Result<Arc<ShardMap>> {
        let cached = self
            .inner
            .streams
            .lock()
            .expect("streams lock")
            .get(stream)
            .cloned();
        match cached {
            Some(map) => Ok(map),
            None => Ok(self.describe(stream).await?.1),
        }
    }

    /// Drops the cached routing table of `stream`; the next request describes it again.
    pub fn forget_stream(&self, stream: &str) {
        self.inner
            .streams
            .lock()
            .expect("streams lock")
            .remove(stream);
    }

    /// Forgets the routing table when an error says it is stale.
    pub(crate) fn forget_on(&self, stream: &str, err: &ClientError) {
        if matches!(
            err.code(),
            Some(
                ErrorCode::UnknownStream
                    | ErrorCode::UnknownShard
                    | ErrorCode::WrongShard
                    | ErrorCode::ShardClosed
            )
        ) {
            self.forget_stream(stream);
        }
    }

    // ---- writes ----------------------------------------------------------------------

    /// Puts one record (routed by MD5 of `key`, or by `explicit_hash_key`), retrying while
    /// the server refuses it without storing it (throttled, busy).
    pub async fn put_record(
        &self,
        stream: &str,
        key: &str,
        data: impl AsRef<[u8]>,
        explicit_hash_key: Option<u128>,
    ) -> Result<PutResult> {
        // Copied once, into the batch that is sent (and re-sent by a retry).
        let entry = RecordView {
            key,
            data: data.as_ref(),
            explicit_hash_key,
        };
        let map = self.shard_map(stream).await?;
        check_record(&map, entry)?;
        let core = map
            .route(entry.key.as_bytes(), explicit_hash_key)
            .map_or(Target::Bootstrap, |r| Target::Core(r.core));
        let mut builder = BatchBuilder::with_capacity(entry.data.len() + entry.key.len() + 96);
        builder
            .push(entry.key.as_bytes(), entry.data, explicit_hash_key)
            .map_err(|e| ClientError::invalid(ErrorCode::from(e.clone()), e.to_string()))?;
        let batch = Bytes::from(builder.into_batch());
        let policy = self.inner.config.retry;
        let mut attempt = 0;
        loop {
            let result: Result<PutResult> = async {
                let conn = self.conn(core).await?;
                let frame = conn
                    .call(
                        |out, id| encode_put_record_head(out, id, stream, batch.len()),
                        batch.clone(),
                        self.timeout(0),
                    )
                    .await?;
                match decode_reply(&frame, Some(Opcode::PutRecord))? {
                    Response::PutRecord(r) => Ok(PutResult {
                        shard_id: r.shard_id,
                        seq: r.seq,
                    }),
                    _ => unreachable!("decode_reply checked the opcode"),
                }
            }
            .await;
            match result {
                Err(e) if e.is_safe_to_retry() && attempt < policy.max_attempts => {
                    tokio::time::sleep(policy.delay(attempt, e.retry_after_ms())).await;
                    attempt += 1;
                }
                Err(e) => {
                    self.forget_on(stream, &e);
                    return Err(e);
                }
                Ok(r) => return Ok(r),
            }
        }
    }

    /// Sends one producer batch to its shard's core, once.
    pub(crate) async fn put_batch_once(
        &self,
        stream: &str,
        route: &ShardRoute,
        batch: Bytes,
    ) -> Result<PutBatchResponse> {
        let conn = self.conn(Target::Core(route.core)).await?;
        let batch_len = batch.len();
        let frame = conn
            .call(
                |out, id| encode_put_batch_head(out, id, stream, route.shard_id, batch_len),
                batch,
                self.timeout(0),
            )
            .await?;
        match decode_reply(&frame, Some(Opcode::PutBatch))? {
            Response::PutBatch(r) if r.shard_id == route.shard_id => Ok(r),
            Response::PutBatch(r) => Err(ClientError::protocol(format!(
                "put-batch for shard {} answered for shard {}",
                route.shard_id, r.shard_id
            ))),
            _ => unreachable!("decode_reply checked the opcode"),
        }
    }

    /// Sends one batch to each of several shards of one core in one request, once. Returns
    /// each batch's outcome, in order; the whole request fails only for a transport or
    /// protocol error (or an error for the whole stream).
    pub(crate) async fn put_batches_once(
        &self,
        stream: &str,
        core: u16,
        batches: &[(u32, Bytes)],
    ) -> Result<Vec<Result<PutBatchResponse>>> {
        let conn = self.conn(Target::Core(core)).await?;
        // Every shard id in one buffer, each part a slice of it (at 10,000 shards a call
        // holds a batch per record: an allocation per id was one more per record).
        let ids = Bytes::from(
            batches
                .iter()
                .flat_map(|(shard_id, _)| shard_id.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        let mut body = Vec::with_capacity(2 * batches.len());
        let mut body_len = 0;
        for (i, (_, batch)) in batches.iter().enumerate() {
            body.push(ids.slice(4 * i..4 * i + 4));
            body.push(batch.clone());
            body_len += 4 + batch.len();
        }
        let count = batches.len();
        let frame = conn
            .call_parts(
                |out, id| encode_put_batches_head(out, id, stream, count, body_len),
                body,
                self.timeout(0),
            )
            .await?;
        let Response::PutBatches(r) = decode_reply(&frame, Some(Opcode::PutBatches))? else {
            unreachable!("decode_reply checked the opcode")
        };
        if r.outcomes.len() != batches.len() {
            return Err(ClientError::protocol(format!(
                "put-batches of {} batches answered with {} outcomes",
                batches.len(),
                r.outcomes.len()
            )));
        }
        let mut out = Vec::with_capacity(count);
        for ((shard_id, _), o) in batches.iter().zip(r.outcomes) {
            if o.shard_id() != *shard_id {
                return Err(ClientError::protocol(format!(
                    "put-batches outcome for shard {} where shard {shard_id} was expected",
                    o.shard_id()
                )));
            }
            out.push(match o {
                ShardOutcome::Stored(r) => Ok(r),
                ShardOutcome::Failed(f) => Err(ClientError::from_wire(
                    f.code,
                    f.retry_after_ms,
                    f.message,
                    f.shard_map_version,
                )),
            });
        }
        Ok(out)
    }

    /// Largest request frame the server takes.
    pub(crate) fn max_request_bytes(&self) -> usize {
        self.inner.server.max_frame_bytes as usize
    }

    // ---- reads -----------------------------------------------------------------------

    /// Opens an iterator on `shard_id` of `stream` at `position`.
    pub async fn get_iterator(
        &self,
        stream: &str,
        shard_id: u32,
        position: Position,
    ) -> Result<ShardIterator> {
        check_stream_name(stream)?;
        let core = match self.shard_map(stream).await {
            Ok(map) => map.core_of(shard_id),
            Err(e) if e.code() == Some(ErrorCode::UnknownStream) => return Err(e),
            Err(_) => None,
        };
        let target = core.map_or(Target::Bootstrap, Target::Core);
        let req = Request::GetIterator(GetIteratorRequest {
            stream,
            shard_id,
            position,
        });
        let result = async {
            let frame = self.request(target, &req, 0).await?;
            match decode_reply(&frame, Some(Opcode::GetIterator))? {
                Response::GetIterator(r) => Ok(ShardIterator {
                    token: frame.slice_ref(r.iterator),
                    core,
                }),
                _ => unreachable!("decode_reply checked the opcode"),
            }
        }
        .await;
        result.inspect_err(|e| self.forget_on(stream, e))
    }

    /// Reads up to `max_records` records (1..=10,000) and `max_bytes` bytes (1..=10 MiB) at
    /// `iterator`. With `wait_ms > 0` (at most 30,000) the server holds the call open until
    /// a record arrives or the wait ends. Every batch is verified (both CRCs) before its
    /// records are returned. Not retried: see [`crate::ShardReader`] for a reader that
    /// retries read throttling and renews expired iterators.
    pub async fn get_records(
        &self,
        iterator: &ShardIterator,
        max_records: u32,
        max_bytes: u32,
        wait_ms: u32,
    ) -> Result<Records> {
        let req = Request::GetRecords(GetRecordsRequest {
            iterator: &iterator.token,
            max_records,
            max_bytes,
            wait_ms,
        });
        let target = iterator.core.map_or(Target::Bootstrap, Target::Core);
        let frame = self.request(target, &req, wait_ms).await?;
        decode_records(&frame, iterator.core)
    }
}

/// The records of a get-records response frame, verified; their data borrows the frame.
fn decode_records(frame: &Bytes, core: Option<u16>) -> Result<Records> {
    let Response::GetRecords(resp) = decode_reply(frame, Some(Opcode::GetRecords))? else {
        unreachable!("decode_reply checked the opcode")
    };
    let mut records = Vec::new();
    for r in resp.records() {
        let r = r.map_err(|e| ClientError::Protocol {
            code: e.code(),
            message: format!("a record batch failed its end-to-end check: {e}"),
        })?;
        let key = std::str::from_utf8(r.key)
            .map_err(|_| ClientError::protocol("a record's partition key is not UTF-8"))?;
        records.push(Record {
            seq: r.seq,
            ts_ms: r.arrival_ts_ms,
            key: key.to_string(),
            data: frame.slice_ref(r.data),
            explicit_hash_key: r.explicit_hash_key,
        });
    }
    Ok(Records {
        records,
        next_iterator: resp.head.next_iterator.map(|t| ShardIterator {
            token: frame.slice_ref(t),
            core,
        }),
        millis_behind_latest: resp.head.millis_behind_latest,
        start_seq: resp.head.start_seq,
        end_seq: resp.head.end_seq,
        child_shards: resp.head.child_shards.to_vec(),
    })
}

pub(crate) fn check_stream_name(name: &str) -> Result<()> {
    if is_valid_stream_name(name) {
        Ok(())
    } else {
        Err(ClientError::invalid(
            ErrorCode::InvalidArgument,
            format!("invalid stream name {name:?}: use 1..=128 characters of [a-zA-Z0-9_.-]"),
        ))
    }
}

fn check_retention(hours: u32) -> Result<()> {
    if is_valid_retention_hours(hours) {
        Ok(())
    } else {
        Err(ClientError::invalid(
            ErrorCode::InvalidArgument,
            format!("retention of {hours} hours is not in 1..=8760"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(host_of("127.0.0.1:7400"), "127.0.0.1");
        assert_eq!(host_of("spate.example:7400"), "spate.example");
        assert_eq!(host_of("[::1]:7400"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        let options = TlsOptions::default();
        assert_eq!(
            options.server_name_for("127.0.0.1:7400").unwrap(),
            rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::new(127, 0, 0, 1).into())
        );
        assert_eq!(
            options
                .server_name_for("db.example:1")
                .unwrap()
                .to_str()
                .as_ref(),
            "db.example"
        );
        let named = TlsOptions {
            server_name: Some("spate.internal".into()),
            ..TlsOptions::default()
        };
        assert_eq!(
            named
                .server_name_for("10.0.0.5:7400")
                .unwrap()
                .to_str()
                .as_ref(),
            "spate.internal"
        );
        let bad = TlsOptions {
            server_name: Some("not a name!".into()),
            ..TlsOptions::default()
        };
        assert!(matches!(
            bad.server_name_for("h:1"),
            Err(ClientError::Config { .. })
        ));
    }

    #[test]
    fn unusable_tls_files_are_config_errors_naming_them() {
        let missing = TlsOptions::with_ca_file("/nonexistent/spate-ca.pem");
        let err = missing.client_config().unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            matches!(&err, ClientError::Config { message } if message.contains("spate-ca.pem")),
            "{err}"
        );
        let garbage = TlsOptions {
            ca: Some(Pem::Bytes(b"no certificate here".to_vec())),
            ..TlsOptions::default()
        };
        let err = garbage.client_config().unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn pem_bytes_never_reach_a_log() {
        let key = Pem::Bytes(b"-----BEGIN PRIVATE KEY-----secret".to_vec());
        let shown = format!("{key:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("bytes"), "{shown}");
    }
}
