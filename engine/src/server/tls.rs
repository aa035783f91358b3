//! TLS on the engine's listeners: the rustls configuration (ring provider), the handshake,
//! the socket a TLS connection reads and writes through, and the identity of a client that
//! authenticated with a certificate.
//!
//! Lifecycle: the certificate, key and client CAs are read once at start
//! ([`ServerTls::load`], from `tls_cert_file`, `tls_key_file`, `tls_client_ca_file`);
//! `Server::start` loads them before any core starts, so a missing or invalid file is one
//! startup error naming it, and hands the same configuration to the metrics endpoint.
//! Each core then builds its own rustls configuration from the same files when it binds
//! its listeners: a handshake never takes a lock shared with another core (rustls' session
//! cache is per core).
//!
//! Concurrency contract: a connection's TLS state ([`futures_rustls::server::TlsStream`])
//! lives on the core that accepted it, shared by its reader and writer tasks through one
//! `RefCell` as the plain socket is (each poll borrows it for its own duration). glommio
//! keeps one waker per direction of a socket, so only the writer task may write to it:
//! [`TlsIo`] refuses writes while the reader polls (rustls would otherwise try to send an
//! alert from the reader, taking the writer's waker). Such an alert stays queued in rustls
//! and leaves with the writer's close.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{Preallocated, TcpStream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::config::EngineConfig;
use crate::error::EngineError;

/// Ciphertext read from the socket at once. rustls asks for 4 KiB at a time; reading through
/// this buffer takes up to two full TLS records per system call instead. It is allocated
/// per TLS connection, for the connection's life.
const TLS_READ_BUFFER_BYTES: usize = 32 << 10;

/// A TLS connection after its handshake.
pub(crate) type TlsSocket = futures_rustls::server::TlsStream<TlsIo>;

/// The server's TLS configuration, loaded from the files the engine configuration names.
#[derive(Clone)]
pub(crate) struct ServerTls {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate chain, its key and (for mutual TLS) the client CAs; `None`
    /// when no certificate is configured. Every error names the file.
    pub(crate) fn load(cfg: &EngineConfig) -> Result<Option<ServerTls>, EngineError> {
        let (Some(cert_file), Some(key_file)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else {
            return Ok(None);
        };
        let chain = read_certs(cert_file, "tls_cert_file")?;
        let key = read_key(key_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| EngineError::Startup(format!("TLS protocol versions: {e}")))?;
        let builder = match &cfg.tls_client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca_file) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca_file, "tls_client_ca_file")? {
                    roots.add(cert).map_err(|e| {
                        EngineError::Startup(format!(
                            "tls_client_ca_file {}: not a usable CA certificate: {e}",
                            ca_file.display()
                        ))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            EngineError::Startup(format!(
                                "tls_client_ca_file {}: {e}",
                                ca_file.display()
                            ))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        // Checks that the key is the certificate's.
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            EngineError::Startup(format!(
                "tls_cert_file {} with tls_key_file {}: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
        Ok(Some(ServerTls {
            config: Arc::new(config),
        }))
    }

    /// The rustls configuration, for the blocking metrics endpoint.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        futures_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Runs the server side of a handshake on `stream`, bounded by `timeout`; the error says
    /// why it failed (rustls' reason, the peer's end, or the time).
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> io::Result<TlsSocket> {
        let io = TlsIo {
            tcp: stream.buffered_with(Preallocated::new(TLS_READ_BUFFER_BYTES)),
            reading: false,
        };
        let handshake = async { self.acceptor().accept(io).await };
        let expire = async {
            glommio::timer::sleep(timeout).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the TLS handshake did not complete within {} ms",
                    timeout.as_millis()
                ),
            ))
        };
        futures_lite::future::or(handshake, expire).await
    }
}

/// Reads every certificate of a PEM file; at least one.
fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, EngineError> {
    let fail = |why: String| EngineError::Startup(format!("{key} {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, EngineError> {
    let fail =
        |why: String| EngineError::Startup(format!("tls_key_file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            fail("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into())
        }
        e => fail(format!("invalid PEM: {e}")),
    })
}

/// The identity a client proved with its certificate (mutual TLS): the subject's common
/// name, or `sha256:` and the certificate's fingerprint when it has none. `None` without
/// a client certificate.
pub(crate) fn client_identity(conn: &ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    Some(subject_common_name(cert).unwrap_or_else(|| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(cert.as_ref());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }))
}

/// The common name (OID 2.5.4.3) of an X.509 certificate's subject, read from its DER.
/// The certificate was verified by webpki before this runs; anything unexpected here is
/// `None`, never a panic.
fn subject_common_name(cert: &[u8]) -> Option<String> {
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(cert)? else {
        return None;
    };
    // TBSCertificate: [0] version (optional), serialNumber, signature, issuer, validity,
    // subject, ...
    let mut rest = tbs;
    if let (0xa0, _, after) = der(rest)? {
        rest = after;
    }
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (0x30, mut names, _) = der(rest)? else {
        return None;
    };
    // Name: a SEQUENCE of RelativeDistinguishedName (a SET of AttributeTypeAndValue).
    while !names.is_empty() {
        let (0x31, mut set, after) = der(names)? else {
            return None;
        };
        names = after;
        while !set.is_empty() {
            let (0x30, attribute, after) = der(set)? else {
                return None;
            };
            set = after;
            let (0x06, oid, value) = der(attribute)? else {
                return None;
            };
            if oid != COMMON_NAME {
                continue;
            }
            let (tag, value, _) = der(value)?;
            return match tag {
                // UTF8String, and PrintableString, TeletexString and IA5String (ASCII in
                // practice; anything else in them is refused, not guessed at).
                0x0c | 0x13 | 0x14 | 0x16 => std::str::from_utf8(value).ok().map(str::to_string),
                // BMPString: UTF-16 big-endian.
                0x1e if value.len() % 2 == 0 => String::from_utf16(
                    &value
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect::<Vec<_>>(),
                )
                .ok(),
                _ => None,
            };
        }
    }
    None
}

/// One DER element at the front of `bytes`: its tag, its contents and what follows it.
fn der(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The TCP socket under a TLS connection: reads go through a buffer (see
/// `TLS_READ_BUFFER_BYTES`), and writes are refused while the connection's reader polls
/// (see the module docs).
pub(crate) struct TlsIo {
    tcp: TcpStream<Preallocated>,
    reading: bool,
}

impl TlsIo {
    /// The TCP socket, for socket options and shutdown.
    pub(crate) fn tcp(&self) -> &TcpStream<Preallocated> {
        &self.tcp
    }
}

/// Polls a read of `tls`, during which rustls may not write to the socket.
pub(crate) fn poll_read_tls(
    tls: &mut TlsSocket,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    tls.get_mut().0.reading = true;
    let polled = Pin::new(&mut *tls).poll_read(cx, buf);
    tls.get_mut().0.reading = false;
    polled
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.reading {
            // Only rustls' "last gasp" alert after a failed read comes here, and it ignores
            // the result: the alert stays queued and leaves with the writer's close.
            return Poll::Ready(Err(io::ErrorKind::WouldBlock.into()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(names: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = names;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        let mut names = rcgen::DistinguishedName::new();
        names.push(rcgen::DnType::OrganizationName, "Spate tests");
        names.push(rcgen::DnType::CommonName, "producer-7");
        assert_eq!(
            subject_common_name(&cert_with(names)).as_deref(),
            Some("producer-7")
        );
        let mut no_cn = rcgen::DistinguishedName::new();
        no_cn.push(rcgen::DnType::OrganizationName, "Spate tests");
        assert_eq!(subject_common_name(&cert_with(no_cn)), None);
    }

    #[test]
    fn truncated_or_garbage_der_is_none() {
        let mut names = rcgen::DistinguishedName::new();
        names.push(rcgen::DnType::CommonName, "worker");
        let cert = cert_with(names);
        for len in 0..cert.len() {
            // Every prefix is refused or read within bounds; none panics.
            let _ = subject_common_name(&cert[..len]);
        }
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(subject_common_name(b"not a certificate"), None);
    }

    #[test]
    fn missing_and_invalid_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server-key.pem");
        let cfg = EngineConfig {
            tls_cert_file: Some(cert.clone()),
            tls_key_file: Some(key.clone()),
            ..EngineConfig::small(dir.path())
        };
        let err = ServerTls::load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("server.pem") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::write(&cert, "not pem").unwrap();
        let err = ServerTls::load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("server.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let signing = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&cert, params.self_signed(&signing).unwrap().pem()).unwrap();
        let err = ServerTls::load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("server-key.pem") && err.contains("cannot read"),
            "{err}"
        );
        // Another key than the certificate's.
        std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let err = ServerTls::load(&cfg).unwrap_err().to_string();
        assert!(err.contains("server-key.pem"), "{err}");
        std::fs::write(&key, signing.serialize_pem()).unwrap();
        assert!(ServerTls::load(&cfg).unwrap().is_some());
        let mutual = EngineConfig {
            tls_client_ca_file: Some(dir.path().join("ca.pem")),
            ..cfg
        };
        let err = ServerTls::load(&mutual).unwrap_err().to_string();
        assert!(
            err.contains("tls_client_ca_file") && err.contains("ca.pem"),
            "{err}"
        );
        assert!(ServerTls::load(&EngineConfig::small(dir.path()))
            .unwrap()
            .is_none());
    }
}
