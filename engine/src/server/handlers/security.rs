//! Security on the request path: authentication (a SCRAM-style challenge–response, or a
//! TLS client certificate that names a principal), authorization of every request against
//! the principal's policies (decisions cached per connection until principals or policies
//! change), principal and policy administration, and what each request is to the audit
//! trail (its action, resource and parameters).
//!
//! With `auth = false` (the default) nothing is checked: every request is allowed, and a
//! connection may still authenticate (to test credentials); principals and policies cannot
//! be changed (made while anyone may connect, they could be anyone's). The audit trail is kept either
//! way unless `audit = false`.

use std::rc::Rc;

use rand::RngCore;
use serde_json::{json, Value};
use spate_protocol::auth::{
    AuthChallengeRequest, AuthChallengeResponse, AuthenticateRequest, AuthenticateResponse,
    ListPrincipalsResponse, PolicyDocument, PrincipalCreated, PrincipalInfo, ReadAuditRequest,
    ReadAuditResponse,
};
use spate_protocol::scram::{self, StoredCredentials};
use spate_protocol::{encode_response, ErrorCode, Request, Response};

use super::{fail, Failure};
use crate::audit::AuditEvent;
use crate::auth::{Decision, DecisionCache};
use crate::io::Storage;
use crate::runtime::{call, call_read, AuthAnswer, AuthOp, Core, CoreMsg};
use crate::server::transport::ConnState;

/// A connection's security state.
#[derive(Debug, Default)]
pub(crate) struct ConnSecurity {
    /// Who the connection is authenticated as.
    principal: Option<Rc<str>>,
    /// The access key it proved (none: its client certificate named the principal).
    access_key_id: Option<Rc<str>>,
    /// Whether its TLS client certificate was looked up as a principal already.
    certificate_checked: bool,
    /// The challenge sent, waiting for its proof (used once).
    pending: Option<Pending>,
    /// Authentication failed here: every further request is refused.
    failed: bool,
    /// Decisions cached under one principals-and-policies version.
    decisions: DecisionCache,
}

#[derive(Debug)]
struct Pending {
    access_key_id: String,
    principal: Option<(String, bool)>,
    credentials: StoredCredentials,
    auth_message: Vec<u8>,
}

impl ConnSecurity {
    /// Who the connection is authenticated as, for audit lines and logs.
    pub(crate) fn principal(&self) -> Option<Rc<str>> {
        self.principal.clone()
    }
}

async fn auth_call<S: Storage + 'static>(
    core: &Core<S>,
    op: AuthOp,
    changes: bool,
) -> Result<AuthAnswer, Failure> {
    let peer = &core.peers[0];
    let answer = if changes {
        call(peer, |reply| CoreMsg::Auth { op, reply }).await
    } else {
        call_read(peer, |reply| CoreMsg::Auth { op, reply }).await
    };
    answer.map_err(fail)
}

fn failure(code: ErrorCode, message: String) -> Failure {
    (code, 0, message).into()
}

/// The principal the connection's TLS client certificate names, looked up once.
async fn certificate_principal<S: Storage + 'static>(core: &Core<S>, conn: &ConnState) {
    let Some(subject) = conn.client_identity().map(str::to_owned) else {
        return;
    };
    if conn.security.borrow().certificate_checked {
        return;
    }
    let answer = auth_call(core, AuthOp::Enabled { name: subject }, false).await;
    let mut sec = conn.security.borrow_mut();
    sec.certificate_checked = true;
    if let (Ok(AuthAnswer::Principal(Some(name))), None) = (answer, &sec.principal) {
        sec.principal = Some(Rc::from(name));
    }
}

/// Who a new connection is (for Hello): the principal of its client certificate, if any.
pub(super) async fn hello_principal<S: Storage + 'static>(
    core: &Core<S>,
    conn: &ConnState,
) -> Option<Rc<str>> {
    certificate_principal(core, conn).await;
    conn.security.borrow().principal.clone()
}

/// Checks that the connection's principal may do `action` on `resource` (a stream name,
/// or `*` for actions on no stream). Allowed at once with authentication off.
pub(crate) async fn authorize<S: Storage + 'static>(
    core: &Core<S>,
    conn: &ConnState,
    action: &'static str,
    resource: &str,
) -> Result<(), Failure> {
    if !core.cfg.auth {
        return Ok(());
    }
    if conn.security.borrow().failed {
        return Err(failure(
            ErrorCode::AuthenticationFailed,
            "authentication failed on this connection; open a new one".into(),
        ));
    }
    certificate_principal(core, conn).await;
    let version = core.auth_version.get();
    let (principal, access_key_id) = {
        let mut sec = conn.security.borrow_mut();
        let Some(p) = sec.principal.clone() else {
            return Err(failure(
                ErrorCode::AuthenticationRequired,
                format!("{action} needs an authenticated connection: this server has authentication on (give the client an access key id and secret, or a client certificate)"),
            ));
        };
        if let Some(d) = sec.decisions.get(version, action, resource) {
            return verdict(d, &p, action, resource);
        }
        (p, sec.access_key_id.clone())
    };
    let op = AuthOp::Decide {
        principal: principal.to_string(),
        access_key_id: access_key_id.map(|k| k.to_string()),
        action,
        resource: resource.to_owned(),
    };
    let AuthAnswer::Decision(d) = auth_call(core, op, false).await? else {
        unreachable!("a decision answers a decision")
    };
    // Cached only if nothing changed while it was asked for.
    if core.auth_version.get() == version {
        conn.security
            .borrow_mut()
            .decisions
            .insert(version, action, resource, d);
    }
    verdict(d, &principal, action, resource)
}

fn verdict(d: Decision, principal: &str, action: &str, resource: &str) -> Result<(), Failure> {
    let on = if resource == "*" {
        String::new()
    } else {
        format!(" on stream {resource:?}")
    };
    let why = match d {
        Decision::Allow => return Ok(()),
        Decision::ExplicitDeny => "a policy denies it",
        Decision::ImplicitDeny => "no policy allows it",
        Decision::PrincipalDisabled => "the principal is disabled",
        Decision::PrincipalGone => {
            "the principal this connection authenticated as was deleted (authenticate on a new connection)"
        }
    };
    Err(failure(
        ErrorCode::AccessDenied,
        format!("principal {principal:?} may not {action}{on}: {why}"),
    ))
}

/// AuthChallenge: the first step of authenticating.
pub(super) async fn challenge<S: Storage + 'static>(
    core: &Core<S>,
    conn: &ConnState,
    r: AuthChallengeRequest<'_>,
) -> Result<Response<'static>, Failure> {
    {
        let sec = conn.security.borrow();
        if sec.failed {
            return Err(failure(
                ErrorCode::AuthenticationFailed,
                "authentication failed on this connection; open a new one".into(),
            ));
        }
        if let Some(p) = &sec.principal {
            return Err(failure(
                ErrorCode::InvalidArgument,
                format!("the connection is authenticated already, as {p:?}"),
            ));
        }
    }
    let op = AuthOp::Challenge {
        access_key_id: r.access_key_id.to_owned(),
    };
    let AuthAnswer::Challenge {
        credentials,
        principal,
    } = auth_call(core, op, false).await?
    else {
        unreachable!("a challenge answers a challenge")
    };
    let mut server_nonce = [0u8; scram::NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut server_nonce);
    let auth_message = scram::auth_message(
        r.access_key_id,
        &r.client_nonce,
        &server_nonce,
        &credentials.salt,
        credentials.iterations,
    );
    conn.security.borrow_mut().pending = Some(Pending {
        access_key_id: r.access_key_id.to_owned(),
        principal,
        credentials,
        auth_message,
    });
    Ok(Response::AuthChallenge(AuthChallengeResponse {
        server_nonce,
        salt: credentials.salt,
        iterations: credentials.iterations,
    }))
}

/// Authenticate: checks the proof of the challenge sent on this connection (once: a proof
/// sent again, or one recorded on another connection, fails).
pub(super) fn authenticate(
    conn: &ConnState,
    cid: u64,
    r: AuthenticateRequest,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let mut sec = conn.security.borrow_mut();
    let Some(p) = sec.pending.take() else {
        sec.failed = true;
        return Err(failure(
            ErrorCode::AuthenticationFailed,
            "no challenge to answer on this connection (ask for one with AuthChallenge; each is answered once)".into(),
        ));
    };
    let signature = scram::verify(&p.credentials, &p.auth_message, &r.proof);
    match (signature, p.principal) {
        (Some(server_signature), Some((name, true))) => {
            sec.principal = Some(Rc::from(name.as_str()));
            sec.access_key_id = Some(Rc::from(p.access_key_id.as_str()));
            sec.decisions.clear();
            let response = Response::Authenticate(AuthenticateResponse {
                principal: &name,
                server_signature,
            });
            encode_response(out, cid, &response);
            Ok(())
        }
        _ => {
            sec.failed = true;
            Err(failure(
                ErrorCode::AuthenticationFailed,
                format!(
                    "access key {:?}: unknown, wrong secret, or its principal is disabled",
                    p.access_key_id
                ),
            ))
        }
    }
}

/// Principal and policy administration, and audit reads.
pub(super) async fn admin<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    req: &Request<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let (op, changes) = match *req {
        Request::CreatePrincipal(r) => (
            AuthOp::Create {
                name: r.name.to_owned(),
            },
            true,
        ),
        Request::ListPrincipals => (AuthOp::List, false),
        Request::UpdatePrincipal(r) => (
            AuthOp::SetEnabled {
                name: r.name.to_owned(),
                enabled: r.enabled,
            },
            true,
        ),
        Request::DeletePrincipal(r) => (
            AuthOp::Delete {
                name: r.name.to_owned(),
            },
            true,
        ),
        Request::PutPolicy(r) => (
            AuthOp::PutPolicy {
                principal: r.principal.to_owned(),
                policy: r.policy.to_owned(),
                document: r.document.to_owned(),
            },
            true,
        ),
        Request::GetPolicy(r) => (
            AuthOp::GetPolicy {
                principal: r.principal.to_owned(),
                policy: r.policy.to_owned(),
            },
            false,
        ),
        Request::DeletePolicy(r) => (
            AuthOp::DeletePolicy {
                principal: r.principal.to_owned(),
                policy: r.policy.to_owned(),
            },
            true,
        ),
        Request::ReadAudit(ReadAuditRequest {
            from_seq,
            max_lines,
            wait_ms,
        }) => (
            AuthOp::ReadAudit {
                from_seq,
                max: max_lines as usize,
                wait_ms,
            },
            false,
        ),
        _ => unreachable!("not an administration request"),
    };
    // Made while anyone may connect, a principal and its policies could be anyone's: and
    // at the first start with authentication on, no root would be made (one exists), so
    // whoever made them would be the only administrator.
    if changes && !core.cfg.auth {
        return Err(failure(
            ErrorCode::InvalidArgument,
            "authentication is off on this server: principals and policies are managed on a server started with --auth on (auth = true), which creates root at its first start".into(),
        ));
    }
    let answer = auth_call(core, op, changes).await?;
    match answer {
        AuthAnswer::Created {
            name,
            access_key_id,
            secret,
        } => {
            let r = Response::CreatePrincipal(PrincipalCreated {
                name: &name,
                access_key_id: &access_key_id,
                secret: &secret,
            });
            encode_response(out, cid, &r);
        }
        AuthAnswer::Principals(list) => {
            let principals = list
                .iter()
                .map(|p| PrincipalInfo {
                    name: &p.name,
                    access_key_id: &p.access_key_id,
                    enabled: p.enabled,
                    created_ms: p.created_ms,
                    policies: p.policy_names.iter().map(String::as_str).collect(),
                })
                .collect();
            let r = Response::ListPrincipals(ListPrincipalsResponse { principals });
            encode_response(out, cid, &r);
        }
        AuthAnswer::Policy(document) => {
            let r = Response::GetPolicy(PolicyDocument {
                document: &document,
            });
            encode_response(out, cid, &r);
        }
        AuthAnswer::AuditLines(lines, next_seq) => {
            let r = Response::ReadAudit(ReadAuditResponse {
                next_seq,
                lines: lines.iter().map(String::as_str).collect(),
            });
            encode_response(out, cid, &r);
        }
        AuthAnswer::Done => {
            let r = match req {
                Request::UpdatePrincipal(_) => Response::UpdatePrincipal,
                Request::DeletePrincipal(_) => Response::DeletePrincipal,
                Request::PutPolicy(_) => Response::PutPolicy,
                _ => Response::DeletePolicy,
            };
            encode_response(out, cid, &r);
        }
        other => unreachable!("administration answered {other:?}"),
    }
    Ok(())
}

/// Appends an audit line (core 0) and waits until it is durable.
pub(crate) async fn audit<S: Storage + 'static>(
    core: &Core<S>,
    event: AuditEvent,
) -> Result<(), Failure> {
    if !core.cfg.audit {
        return Ok(());
    }
    auth_call(core, AuthOp::Audit(Box::new(event)), true)
        .await
        .map(|_| ())
}

/// The audit line of a request answered with `result` (an error code and message).
pub(super) fn audit_event<S: Storage + 'static>(
    core: &Core<S>,
    conn: &ConnState,
    cid: u64,
    req: &Request<'_>,
    result: Option<(ErrorCode, &str)>,
) -> AuditEvent {
    AuditEvent {
        time_ms: core.clock.now_ms(),
        principal: conn
            .security
            .borrow()
            .principal
            .as_deref()
            .map(str::to_owned),
        source: conn.peer().map(|p| p.to_string()),
        action: audit_action(req).to_owned(),
        resource: match req {
            // A read names its stream inside its iterator (a forged one names none).
            Request::GetRecords(r) => iterator_stream(core, r.iterator),
            other => resource_of(other).to_owned(),
        },
        params: params_of(req),
        result: result.map_or("ok", |(c, _)| c.name()).to_owned(),
        error: result.map(|(_, m)| m.to_owned()),
        request_id: cid,
    }
}

/// The stream an iterator was issued for, if it verifies and the stream still exists;
/// else `*`.
fn iterator_stream<S: Storage + 'static>(core: &Core<S>, iterator: &[u8]) -> String {
    let Some(key) = core.token_key.get() else {
        return "*".into();
    };
    let Ok(token) = spate_protocol::token::IteratorToken::decode(iterator, key) else {
        return "*".into();
    };
    super::route_by_id(core, token.stream_id).map_or_else(|| "*".into(), |e| e.name.clone())
}

/// The action an audit line names.
fn audit_action(req: &Request<'_>) -> &'static str {
    match req {
        Request::AuthChallenge(_) | Request::Authenticate(_) => "spate:Authenticate",
        Request::GetRecords(_) => "spate:GetRecords",
        Request::Hello(_) => "spate:Hello",
        Request::SubscribeCredit(_) => "spate:Subscribe",
        other => action_of(other).expect("every other request has an action"),
    }
}

/// The action a request is authorized as. `None`: allowed to anyone (saying hello,
/// authenticating, granting credit to one's own subscription) or checked where the
/// resource is known (GetRecords names its stream only inside the iterator).
pub(crate) fn action_of(req: &Request<'_>) -> Option<&'static str> {
    Some(match req {
        Request::Hello(_)
        | Request::AuthChallenge(_)
        | Request::Authenticate(_)
        | Request::SubscribeCredit(_)
        | Request::GetRecords(_) => return None,
        Request::CreateStream(_) => "spate:CreateStream",
        Request::DeleteStream(_) => "spate:DeleteStream",
        Request::ListStreams(_) => "spate:ListStreams",
        Request::DescribeStream(_) => "spate:DescribeStream",
        Request::IncreaseRetention(_) | Request::DecreaseRetention(_) => "spate:UpdateRetention",
        Request::SplitShard(_) => "spate:SplitShard",
        Request::MergeShards(_) => "spate:MergeShards",
        Request::UpdateShardCount(_) => "spate:UpdateShardCount",
        Request::UpdateStreamMode(_) => "spate:UpdateStreamMode",
        Request::EnableEnhancedMonitoring(_) => "spate:EnableEnhancedMonitoring",
        Request::DisableEnhancedMonitoring(_) => "spate:DisableEnhancedMonitoring",
        Request::PutRecord(_) => "spate:PutRecord",
        Request::PutBatch(_) | Request::PutBatches(_) => "spate:PutRecords",
        Request::GetIterator(_) => "spate:GetShardIterator",
        Request::RegisterConsumer(_) => "spate:RegisterStreamConsumer",
        Request::DeregisterConsumer(_) => "spate:DeregisterStreamConsumer",
        Request::ListConsumers(_) => "spate:ListStreamConsumers",
        Request::DescribeConsumer(_) => "spate:DescribeStreamConsumer",
        Request::SubscribeToShard(_) => "spate:Subscribe",
        Request::GroupHeartbeat(_) => "spate:GroupHeartbeat",
        Request::Checkpoint(_) => "spate:Checkpoint",
        Request::DescribeGroup(_) => "spate:DescribeGroup",
        Request::DeleteGroup(_) => "spate:DeleteGroup",
        Request::ListGroups(_) => "spate:ListGroups",
        Request::CreatePrincipal(_) => "spate:CreatePrincipal",
        Request::ListPrincipals => "spate:ListPrincipals",
        Request::UpdatePrincipal(_) => "spate:UpdatePrincipal",
        Request::DeletePrincipal(_) => "spate:DeletePrincipal",
        Request::PutPolicy(_) => "spate:PutPolicy",
        Request::GetPolicy(_) => "spate:GetPolicy",
        Request::DeletePolicy(_) => "spate:DeletePolicy",
        Request::ReadAudit(_) => "spate:ReadAudit",
        Request::StartStreamEncryption(_) => "spate:StartStreamEncryption",
        Request::StopStreamEncryption(_) => "spate:StopStreamEncryption",
        Request::RotateKeys => "spate:RotateKeys",
    })
}

/// Whether a request (by its opcode) is a control-plane call, recorded in the audit trail
/// whatever its outcome, or an authentication. Data-plane calls — puts, reads,
/// subscriptions, group heartbeats and checkpoints — are recorded only when refused.
pub(crate) fn is_audited_opcode(op: spate_protocol::Opcode) -> bool {
    use spate_protocol::Opcode as O;
    matches!(
        op,
        O::CreateStream
            | O::DeleteStream
            | O::ListStreams
            | O::DescribeStream
            | O::IncreaseRetention
            | O::DecreaseRetention
            | O::SplitShard
            | O::MergeShards
            | O::UpdateShardCount
            | O::UpdateStreamMode
            | O::EnableEnhancedMonitoring
            | O::DisableEnhancedMonitoring
            | O::StartStreamEncryption
            | O::StopStreamEncryption
            | O::RotateKeys
            | O::RegisterConsumer
            | O::DeregisterConsumer
            | O::ListConsumers
            | O::DescribeConsumer
            | O::DescribeGroup
            | O::DeleteGroup
            | O::ListGroups
            | O::CreatePrincipal
            | O::ListPrincipals
            | O::UpdatePrincipal
            | O::DeletePrincipal
            | O::PutPolicy
            | O::GetPolicy
            | O::DeletePolicy
            | O::Authenticate
    )
}

/// The resource a request concerns in policies and audit lines: the stream's name, the
/// principal's for principal administration, `*` for none.
pub(crate) fn resource_of<'a>(req: &Request<'a>) -> &'a str {
    match req {
        Request::CreatePrincipal(r) | Request::DeletePrincipal(r) => r.name,
        Request::UpdatePrincipal(r) => r.name,
        Request::PutPolicy(r) => r.principal,
        Request::GetPolicy(r) | Request::DeletePolicy(r) => r.principal,
        other => super::stream_of(other).unwrap_or("*"),
    }
}

/// What an audit line records of a request's arguments (never a secret or record data).
pub(crate) fn params_of(req: &Request<'_>) -> Value {
    match req {
        Request::CreateStream(r) => json!({
            "shards": r.shard_count,
            "retention_hours": r.retention_hours,
            "limits": format!("{:?}", r.limits),
            "max_record_data_bytes": r.max_record_data_bytes,
            "encryption": r.encryption.name(),
        }),
        Request::StartStreamEncryption(r) | Request::StopStreamEncryption(r) => {
            json!({ "encryption": r.encryption.name() })
        }
        Request::IncreaseRetention(r) | Request::DecreaseRetention(r) => {
            json!({ "retention_hours": r.retention_hours })
        }
        Request::ListStreams(r) => json!({
            "exclusive_start_name": r.exclusive_start_name,
            "limit": r.limit,
        }),
        Request::SplitShard(r) => json!({
            "shard": r.shard_id,
            "at": r.new_starting_hash_key.to_string(),
        }),
        Request::MergeShards(r) => json!({
            "shard": r.shard_id,
            "with": r.adjacent_shard_id,
        }),
        Request::UpdateShardCount(r) => json!({ "shards": r.target_shard_count }),
        Request::UpdateStreamMode(r) => json!({
            "mode": format!("{:?}", r.mode),
            "max_write_mib_per_s": r.max_write_mib_per_s,
        }),
        Request::RegisterConsumer(r)
        | Request::DeregisterConsumer(r)
        | Request::DescribeConsumer(r) => json!({ "consumer": r.consumer }),
        Request::DescribeGroup(r) | Request::DeleteGroup(r) => json!({ "group": r.group }),
        Request::UpdatePrincipal(r) => json!({ "enabled": r.enabled }),
        Request::PutPolicy(r) => json!({ "policy": r.policy, "document": r.document }),
        Request::GetPolicy(r) | Request::DeletePolicy(r) => json!({ "policy": r.policy }),
        Request::PutRecord(_) | Request::PutBatch(_) | Request::PutBatches(_) => {
            json!({})
        }
        Request::GetIterator(r) => json!({ "shard": r.shard_id }),
        Request::SubscribeToShard(r) => json!({ "consumer": r.consumer, "shard": r.shard_id }),
        Request::GroupHeartbeat(r) => json!({ "group": r.group, "worker": r.worker }),
        Request::Checkpoint(r) => json!({ "group": r.group, "shard": r.shard_id }),
        _ => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_protocol::auth::{PrincipalRequest, PutPolicyRequest};
    use spate_protocol::stream::DeleteStreamRequest;

    #[test]
    fn every_named_action_is_a_policy_action() {
        let samples = [
            Request::DeleteStream(DeleteStreamRequest { name: "s" }),
            Request::ListPrincipals,
            Request::CreatePrincipal(PrincipalRequest { name: "p" }),
            Request::PutPolicy(PutPolicyRequest {
                principal: "p",
                policy: "x",
                document: "{}",
            }),
        ];
        for r in &samples {
            let a = action_of(r).unwrap();
            assert!(crate::auth::policy::ACTIONS.contains(&a), "{a}");
            assert!(is_audited_opcode(r.opcode()));
        }
        assert_eq!(resource_of(&samples[0]), "s");
        assert_eq!(resource_of(&samples[1]), "*");
        assert_eq!(resource_of(&samples[2]), "p");
    }
}
