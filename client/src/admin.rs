//! Administration of principals and their policies (`spate auth ...`): what a server with
//! authentication on checks every request against. These calls are themselves authorized
//! (`spate:CreatePrincipal`, `spate:PutPolicy`, ...).

use spate_protocol::auth::{
    is_valid_principal_name, PolicyRequest, PrincipalRequest, PutPolicyRequest, ReadAuditRequest,
    UpdatePrincipalRequest, MAX_AUDIT_LINES, MAX_AUDIT_WAIT_MS, MAX_POLICY_DOCUMENT_BYTES,
};
use spate_protocol::{ErrorCode, Opcode, Request, Response};

use crate::client::{Client, Target};
use crate::connection::decode_reply;
use crate::error::{ClientError, Result};

/// A principal as listed (no credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalInfo {
    pub name: String,
    pub access_key_id: String,
    pub enabled: bool,
    pub created_ms: i64,
    /// Its policies' names.
    pub policies: Vec<String>,
}

/// A new principal's credentials. The secret is shown this once: the server keeps only
/// what verifies it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewPrincipal {
    pub name: String,
    pub access_key_id: String,
    pub secret: String,
}

impl std::fmt::Debug for NewPrincipal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPrincipal")
            .field("name", &self.name)
            .field("access_key_id", &self.access_key_id)
            .field("secret", &"<hidden>")
            .finish()
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if is_valid_principal_name(name) {
        Ok(())
    } else {
        Err(ClientError::invalid(
            ErrorCode::InvalidArgument,
            format!("invalid {what} name {name:?}: use 1..=128 characters of [A-Za-z0-9_.@-]"),
        ))
    }
}

impl Client {
    async fn admin(&self, req: &Request<'_>, op: Opcode) -> Result<bytes::Bytes> {
        let frame = self.request(Target::Bootstrap, req, 0).await?;
        decode_reply(&frame, Some(op))?;
        Ok(frame)
    }

    /// Creates a principal with no policies (it may do nothing until one is put).
    pub async fn create_principal(&self, name: &str) -> Result<NewPrincipal> {
        check_name("principal", name)?;
        let req = Request::CreatePrincipal(PrincipalRequest { name });
        let frame = self.admin(&req, Opcode::CreatePrincipal).await?;
        match decode_reply(&frame, None)? {
            Response::CreatePrincipal(p) => Ok(NewPrincipal {
                name: p.name.to_string(),
                access_key_id: p.access_key_id.to_string(),
                secret: p.secret.to_string(),
            }),
            _ => unreachable!("checked"),
        }
    }

    /// Every principal, by name.
    pub async fn list_principals(&self) -> Result<Vec<PrincipalInfo>> {
        let frame = self
            .admin(&Request::ListPrincipals, Opcode::ListPrincipals)
            .await?;
        match decode_reply(&frame, None)? {
            Response::ListPrincipals(l) => Ok(l
                .principals
                .iter()
                .map(|p| PrincipalInfo {
                    name: p.name.to_string(),
                    access_key_id: p.access_key_id.to_string(),
                    enabled: p.enabled,
                    created_ms: p.created_ms,
                    policies: p.policies.iter().map(|s| s.to_string()).collect(),
                })
                .collect()),
            _ => unreachable!("checked"),
        }
    }

    /// Enables or disables a principal: a disabled one cannot authenticate, and its open
    /// connections are denied everything from then on.
    pub async fn set_principal_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        check_name("principal", name)?;
        let req = Request::UpdatePrincipal(UpdatePrincipalRequest { name, enabled });
        self.admin(&req, Opcode::UpdatePrincipal).await.map(|_| ())
    }

    pub async fn delete_principal(&self, name: &str) -> Result<()> {
        check_name("principal", name)?;
        let req = Request::DeletePrincipal(PrincipalRequest { name });
        self.admin(&req, Opcode::DeletePrincipal).await.map(|_| ())
    }

    /// Attaches `document` (IAM-like JSON) to `principal` as `policy`, replacing a policy of
    /// that name. The server validates it and names what is wrong.
    pub async fn put_policy(&self, principal: &str, policy: &str, document: &str) -> Result<()> {
        check_name("principal", principal)?;
        check_name("policy", policy)?;
        if document.len() > MAX_POLICY_DOCUMENT_BYTES {
            return Err(ClientError::invalid(
                ErrorCode::InvalidArgument,
                format!(
                    "a policy document is at most {MAX_POLICY_DOCUMENT_BYTES} bytes, not {}",
                    document.len()
                ),
            ));
        }
        let req = Request::PutPolicy(PutPolicyRequest {
            principal,
            policy,
            document,
        });
        self.admin(&req, Opcode::PutPolicy).await.map(|_| ())
    }

    /// The document of `principal`'s `policy`.
    pub async fn get_policy(&self, principal: &str, policy: &str) -> Result<String> {
        check_name("principal", principal)?;
        check_name("policy", policy)?;
        let req = Request::GetPolicy(PolicyRequest { principal, policy });
        let frame = self.admin(&req, Opcode::GetPolicy).await?;
        match decode_reply(&frame, None)? {
            Response::GetPolicy(d) => Ok(d.document.to_string()),
            _ => unreachable!("checked"),
        }
    }

    pub async fn delete_policy(&self, principal: &str, policy: &str) -> Result<()> {
        check_name("principal", principal)?;
        check_name("policy", policy)?;
        let req = Request::DeletePolicy(PolicyRequest { principal, policy });
        self.admin(&req, Opcode::DeletePolicy).await.map(|_| ())
    }

    /// The audit trail's lines from `from_seq` on (0: the newest `max_lines`), up to
    /// `max_lines` (at most 1000), waiting up to `wait_ms` for one when there is none yet;
    /// answers them (JSON, oldest first) and the sequence number to ask for next. The
    /// server keeps its newest 10,000 lines in memory; older ones are in its files.
    pub async fn read_audit(
        &self,
        from_seq: u64,
        max_lines: u32,
        wait_ms: u32,
    ) -> Result<(Vec<String>, u64)> {
        let req = Request::ReadAudit(ReadAuditRequest {
            from_seq,
            max_lines: max_lines.clamp(1, MAX_AUDIT_LINES as u32),
            wait_ms: wait_ms.min(MAX_AUDIT_WAIT_MS),
        });
        let frame = self.request(Target::Bootstrap, &req, wait_ms).await?;
        match decode_reply(&frame, Some(Opcode::ReadAudit))? {
            Response::ReadAudit(r) => {
                Ok((r.lines.iter().map(|l| l.to_string()).collect(), r.next_seq))
            }
            _ => unreachable!("checked"),
        }
    }
}
