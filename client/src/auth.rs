//! Authenticating a connection: the client half of the server's SCRAM-style
//! challenge–response (`spate_protocol::scram`). The secret never leaves the process: the
//! client sends a proof bound to both sides' fresh nonces, and checks the server's
//! signature, which only a server holding the principal's stored key can make.
//!
//! Deriving keys from the secret costs a PBKDF2 of the server's iteration count (4096 by
//! default, a few milliseconds); the result is kept per salt, so a client's many
//! connections (one per core, one per subscription) derive once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::RngCore;
use spate_protocol::auth::{AuthChallengeRequest, AuthenticateRequest};
use spate_protocol::scram::{self, ClientKeys};
use spate_protocol::{encode_request, ErrorCode, Opcode, Request, Response};

use crate::connection::{decode_reply, Connection};
use crate::error::{ClientError, Result};

/// A principal's access key id and secret (`spate auth principal create` shows them).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    pub fn new(access_key_id: impl Into<String>, secret: impl Into<String>) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret: secret.into(),
        }
    }

    /// From `SPATE_ACCESS_KEY_ID` and `SPATE_SECRET`, when both are set.
    pub fn from_env() -> Option<Credentials> {
        let id = std::env::var("SPATE_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("SPATE_SECRET").ok()?;
        Some(Credentials::new(id, secret))
    }
}

/// Keys derived from the secret, by (salt, iterations), shared by a client's connections.
#[derive(Default)]
pub(crate) struct KeyCache(Mutex<Option<Arc<ClientKeys>>>);

impl KeyCache {
    fn get(&self, salt: [u8; 16], iterations: u32) -> Option<Arc<ClientKeys>> {
        let k = self.0.lock().expect("key cache");
        k.as_ref()
            .filter(|k| k.salt() == salt && k.iterations() == iterations)
            .cloned()
    }

    fn put(&self, keys: Arc<ClientKeys>) {
        *self.0.lock().expect("key cache") = Some(keys);
    }
}

fn failed(message: String) -> ClientError {
    ClientError::Server {
        code: ErrorCode::AuthenticationFailed,
        retry_after_ms: 0,
        message,
    }
}

/// Authenticates `conn` as `creds`; answers the principal's name.
pub(crate) async fn authenticate(
    conn: &Connection,
    creds: &Credentials,
    cache: &KeyCache,
    timeout: Duration,
) -> Result<String> {
    let mut client_nonce = [0u8; scram::NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut client_nonce);
    let req = Request::AuthChallenge(AuthChallengeRequest {
        access_key_id: &creds.access_key_id,
        client_nonce,
    });
    let frame = conn
        .call(
            |out, id| encode_request(out, id, &req),
            Bytes::new(),
            timeout,
        )
        .await?;
    let Response::AuthChallenge(ch) = decode_reply(&frame, Some(Opcode::AuthChallenge))? else {
        unreachable!("decode_reply checked the opcode")
    };
    if !scram::is_valid_iterations(ch.iterations) {
        return Err(failed(format!(
            "the server asked for {} PBKDF2 iterations, outside {}..={}",
            ch.iterations,
            scram::MIN_ITERATIONS,
            scram::MAX_ITERATIONS
        )));
    }
    let (salt, iterations) = (ch.salt, ch.iterations);
    let keys = match cache.get(salt, iterations) {
        Some(k) => k,
        None => {
            // PBKDF2 takes milliseconds: off the async workers.
            let secret = creds.secret.clone();
            let derived = tokio::task::spawn_blocking(move || {
                Arc::new(ClientKeys::derive(secret.as_bytes(), salt, iterations))
            })
            .await
            .map_err(|e| failed(format!("deriving keys failed: {e}")))?;
            cache.put(derived.clone());
            derived
        }
    };
    let message = scram::auth_message(
        &creds.access_key_id,
        &client_nonce,
        &ch.server_nonce,
        &ch.salt,
        ch.iterations,
    );
    let proof = keys.proof(&message);
    let req = Request::Authenticate(AuthenticateRequest { proof: proof.proof });
    let frame = conn
        .call(
            |out, id| encode_request(out, id, &req),
            Bytes::new(),
            timeout,
        )
        .await?;
    let Response::Authenticate(ok) = decode_reply(&frame, Some(Opcode::Authenticate))? else {
        unreachable!("decode_reply checked the opcode")
    };
    if !proof.server_signature_matches(&ok.server_signature) {
        return Err(failed(
            "the server's signature is wrong: it does not hold this principal's key (an impostor?)"
                .into(),
        ));
    }
    Ok(ok.principal.to_string())
}
