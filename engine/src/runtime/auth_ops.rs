//! Core 0's security operations: principals and their policies (`crate::auth`), the
//! decisions other cores cache per connection, and the audit trail (`crate::audit`).
//!
//! Principals and policies are kept in `<data>/auth.bin`, written (atomically, through the
//! storage) before a change is answered; every change raises the security version, which
//! core 0 tells every core before it answers, and each connection drops the decisions it
//! cached under an older version. So a disabled principal or a removed policy takes effect
//! for every open connection before the change is acknowledged.

use std::cell::RefCell;
use std::rc::Rc;

use spate_protocol::scram::StoredCredentials;

use super::{call, Core, CoreMsg};
use crate::audit::AuditEvent;
use crate::auth::{AuthError, Decision, PrincipalView};
use crate::error::EngineError;
use crate::io::Storage;

/// A security request for core 0.
#[derive(Debug, Clone)]
pub(crate) enum AuthOp {
    /// The credentials to challenge `access_key_id` with (fake ones for an unknown key, so
    /// a probe learns nothing) and, if it names a principal, who and whether enabled.
    Challenge {
        access_key_id: String,
    },
    /// An enabled principal of this name (a TLS client certificate's subject).
    Enabled {
        name: String,
    },
    Decide {
        principal: String,
        /// The access key the connection proved (none: a client certificate): a principal
        /// of the same name with another key is not the one the connection authenticated as.
        access_key_id: Option<String>,
        action: &'static str,
        resource: String,
    },
    Create {
        name: String,
    },
    List,
    SetEnabled {
        name: String,
        enabled: bool,
    },
    Delete {
        name: String,
    },
    PutPolicy {
        principal: String,
        policy: String,
        document: String,
    },
    GetPolicy {
        principal: String,
        policy: String,
    },
    DeletePolicy {
        principal: String,
        policy: String,
    },
    Audit(Box<AuditEvent>),
    ReadAudit {
        from_seq: u64,
        max: usize,
        wait_ms: u32,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum AuthAnswer {
    Challenge {
        credentials: StoredCredentials,
        /// The principal and whether it is enabled.
        principal: Option<(String, bool)>,
    },
    Principal(Option<String>),
    Decision(Decision),
    Created {
        name: String,
        access_key_id: String,
        secret: String,
    },
    Principals(Vec<PrincipalView>),
    Policy(String),
    /// Audit lines and the sequence number to ask for next.
    AuditLines(Vec<String>, u64),
    Done,
}

impl From<AuthError> for EngineError {
    fn from(e: AuthError) -> EngineError {
        match e {
            AuthError::UnknownPrincipal(name) => EngineError::UnknownPrincipal(name),
            AuthError::PrincipalExists(name) => EngineError::PrincipalExists(name),
            AuthError::UnknownPolicy { principal, policy } => {
                EngineError::UnknownPolicy { principal, policy }
            }
            AuthError::InvalidPolicy(why) => {
                EngineError::InvalidArgument(format!("invalid policy document: {why}"))
            }
            AuthError::InvalidName(why) => EngineError::InvalidArgument(why),
            AuthError::LimitExceeded(why) => EngineError::LimitExceeded(why),
        }
    }
}

/// Where the root principal's credentials are written at the first start with
/// authentication on (readable by the server's user only).
pub const ROOT_CREDENTIALS_FILE: &str = "root.credentials";

impl<S: Storage + 'static> Core<S> {
    /// Core 0 at start: loads the principals and policies, opens the audit trail, and with
    /// authentication on and no principal yet, creates `root` and writes its credentials
    /// to `<data>/root.credentials`.
    pub(super) async fn open_security(&mut self) -> Result<(), EngineError> {
        let path = self.cfg.data_dir.join(crate::auth::AUTH_FILE);
        let bytes =
            self.storage.read_small(&path).await.map_err(|e| {
                EngineError::Startup(format!("cannot read {}: {e}", path.display()))
            })?;
        let mut store = crate::auth::AuthStore::from_bytes(&self.cfg.data_dir, bytes.as_deref())?;
        if self.cfg.auth {
            if let Some((root, secret)) =
                store.ensure_root(self.clock.now_ms(), &mut rand::thread_rng())
            {
                let (path, bytes) = store.encoded();
                self.storage
                    .write_small_atomic(&path, &bytes)
                    .await
                    .map_err(|e| {
                        EngineError::Startup(format!("cannot write {}: {e}", path.display()))
                    })?;
                let creds = self.cfg.data_dir.join(ROOT_CREDENTIALS_FILE);
                let text = serde_json::json!({
                    "name": root.name,
                    "access_key_id": root.access_key_id,
                    "secret": secret,
                })
                .to_string()
                    + "\n";
                self.storage
                    .write_small_private(&creds, text.as_bytes())
                    .await
                    .map_err(|e| {
                        EngineError::Startup(format!("cannot write {}: {e}", creds.display()))
                    })?;
                tracing::warn!(
                    access_key_id = %root.access_key_id,
                    file = %creds.display(),
                    "authentication is on and no principal existed: created principal root (every action allowed); its secret is in the file, readable by this user only — store it elsewhere and delete the file"
                );
            }
        }
        self.auth_saved.set(store.changes);
        self.auth = Some(RefCell::new(store));
        if self.cfg.audit {
            let log = crate::audit::AuditLog::open(
                &*self.storage,
                &self.cfg.data_dir,
                self.cfg.audit_max_file_bytes,
                self.cfg.audit_refusal_lines_per_s,
            )
            .await
            .map_err(|e| EngineError::Startup(format!("cannot open the audit trail: {e}")))?;
            self.audit = Some(log);
        }
        Ok(())
    }

    /// Runs a security operation (core 0). Changes are on disk, and every core knows the
    /// new version, before it answers.
    pub(crate) async fn auth_op(self: &Rc<Self>, op: AuthOp) -> Result<AuthAnswer, EngineError> {
        let store = self.auth.as_ref().expect("security runs on core 0");
        let now = self.clock.now_ms();
        let answer = match op {
            AuthOp::Challenge { access_key_id } => {
                let s = store.borrow();
                let (credentials, principal) = s.credentials_for(&access_key_id);
                return Ok(AuthAnswer::Challenge {
                    credentials,
                    principal: principal.map(|p| (p.name.clone(), p.enabled)),
                });
            }
            AuthOp::Enabled { name } => {
                let s = store.borrow();
                let p = s.by_name(&name).filter(|p| p.enabled);
                return Ok(AuthAnswer::Principal(p.map(|p| p.name.clone())));
            }
            AuthOp::Decide {
                principal,
                access_key_id,
                action,
                resource,
            } => {
                let s = store.borrow();
                let same = s.by_name(&principal).is_some_and(|p| {
                    access_key_id
                        .as_deref()
                        .is_none_or(|k| k == p.access_key_id)
                });
                let d = if same {
                    s.decide(&principal, action, &resource)
                } else {
                    Decision::PrincipalGone
                };
                return Ok(AuthAnswer::Decision(d));
            }
            AuthOp::List => return Ok(AuthAnswer::Principals(store.borrow().list())),
            AuthOp::GetPolicy { principal, policy } => {
                let doc = store.borrow().get_policy(&principal, &policy)?;
                return Ok(AuthAnswer::Policy(doc));
            }
            AuthOp::Audit(event) => {
                let Some(log) = &self.audit else {
                    return Ok(AuthAnswer::Done);
                };
                log.record(&*self.storage, &event).await.map_err(|e| {
                    tracing::error!(error = %e, "the audit trail cannot be written");
                    EngineError::Io(format!("the audit trail cannot be written: {e}"))
                })?;
                return Ok(AuthAnswer::Done);
            }
            AuthOp::ReadAudit {
                from_seq,
                max,
                wait_ms,
            } => {
                let Some(log) = &self.audit else {
                    return Err(EngineError::InvalidArgument(
                        "the audit trail is off on this server (audit = false)".into(),
                    ));
                };
                let from = if from_seq == 0 {
                    (log.last_seq() + 1).saturating_sub(max as u64).max(1)
                } else {
                    from_seq
                };
                // Nothing new yet: wait (up to wait_ms, or until the engine stops) for it.
                if wait_ms > 0 && log.last_seq() < from && !self.stopping.get() {
                    let appended = async {
                        while log.last_seq() < from && !self.stopping.get() {
                            log.appended.wait().await;
                        }
                    };
                    let give_up = async {
                        glommio::timer::sleep(std::time::Duration::from_millis(u64::from(wait_ms)))
                            .await;
                    };
                    let stopping = self.net.stopping.wait();
                    futures_lite::future::or(futures_lite::future::or(appended, give_up), stopping)
                        .await;
                }
                let (lines, next) = log.read(from, max);
                return Ok(AuthAnswer::AuditLines(
                    lines.iter().map(|l| l.to_string()).collect(),
                    next,
                ));
            }
            AuthOp::Create { name } => {
                let (p, secret) =
                    store
                        .borrow_mut()
                        .create_principal(&name, now, &mut rand::thread_rng())?;
                tracing::info!(principal = %name, access_key_id = %p.access_key_id, "principal created");
                AuthAnswer::Created {
                    name,
                    access_key_id: p.access_key_id,
                    secret,
                }
            }
            AuthOp::SetEnabled { name, enabled } => {
                store.borrow_mut().set_enabled(&name, enabled)?;
                tracing::info!(principal = %name, enabled, "principal updated");
                AuthAnswer::Done
            }
            AuthOp::Delete { name } => {
                store.borrow_mut().delete_principal(&name)?;
                tracing::info!(principal = %name, "principal deleted");
                AuthAnswer::Done
            }
            AuthOp::PutPolicy {
                principal,
                policy,
                document,
            } => {
                store
                    .borrow_mut()
                    .put_policy(&principal, &policy, &document)?;
                tracing::info!(principal = %principal, policy = %policy, "policy put");
                AuthAnswer::Done
            }
            AuthOp::DeletePolicy { principal, policy } => {
                store.borrow_mut().delete_policy(&principal, &policy)?;
                tracing::info!(principal = %principal, policy = %policy, "policy deleted");
                AuthAnswer::Done
            }
        };
        self.persist_auth().await?;
        Ok(answer)
    }

    /// Writes the principals and policies if they changed since the last write, then
    /// tells every core the new version (their connections forget cached decisions).
    pub(crate) async fn persist_auth(&self) -> Result<(), EngineError> {
        let store = self.auth.as_ref().expect("core 0");
        let _writer = self.auth_writer.lock().await;
        let want = store.borrow().changes;
        if self.auth_saved.get() >= want {
            return Ok(());
        }
        let (path, bytes) = store.borrow().encoded();
        self.storage.write_small_atomic(&path, &bytes).await?;
        self.auth_saved.set(want);
        for peer in &self.peers {
            call(peer, |reply| CoreMsg::AuthChanged {
                version: want,
                reply,
            })
            .await?;
        }
        Ok(())
    }
}
