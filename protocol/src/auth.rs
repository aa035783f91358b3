//! Authentication and the administration of principals and their policies.
//!
//! A connection to a server with authentication on authenticates once, after `Hello`, by
//! a challenge–response in the manner of SCRAM-SHA-256 (the math is in [`crate::scram`]):
//! the secret never travels, the server keeps only hashes of it, each challenge carries a
//! fresh server nonce so a recorded exchange cannot be replayed, and the server proves it
//! knows the principal's stored key too. A connection whose TLS client certificate maps
//! to a principal is authenticated by the handshake and skips the exchange (`Hello` names
//! the principal).
//!
//! ```text
//! AuthChallenge 2     access_key_id str, client_nonce [32]
//!                     -> server_nonce [32], salt [16], iterations u32
//! Authenticate 3      proof [32]               -> principal str, server_signature [32]
//! CreatePrincipal 60  name str                 -> name str, access_key_id str, secret str
//! ListPrincipals 61   (empty)                  -> count, PrincipalInfo…
//!   PrincipalInfo:    name str, access_key_id str, enabled bool, created_ms i64,
//!                     policies (count, str…)
//! UpdatePrincipal 62  name str, enabled bool   -> (empty)
//! DeletePrincipal 63  name str                 -> (empty)
//! PutPolicy 64        principal str, policy str, document str -> (empty)
//! GetPolicy 65        principal str, policy str -> document str
//! DeletePolicy 66     principal str, policy str -> (empty)
//! ReadAudit 70        from_seq u64 (0: the newest max_lines), max_lines u32, wait_ms u32
//!                     -> next_seq u64, count, line str…
//! ```
//!
//! `[n]` is n bytes as they are (no length). The secret in CreatePrincipal's answer is
//! shown once: the server keeps only what verifies it.

use crate::message::Payload;
use crate::wire::{put_bool, put_count, put_i64, put_str, put_u32, DecodeError, Reader};

/// Longest principal name: 1..=128 bytes of `[A-Za-z0-9_.@-]`.
pub const MAX_PRINCIPAL_NAME_BYTES: usize = 128;
/// Longest access key id.
pub const MAX_ACCESS_KEY_ID_BYTES: usize = 64;
/// Longest secret.
pub const MAX_SECRET_BYTES: usize = 256;
/// Longest policy name (same alphabet as principal names).
pub const MAX_POLICY_NAME_BYTES: usize = 128;
/// Largest policy document (JSON).
pub const MAX_POLICY_DOCUMENT_BYTES: usize = 64 << 10;
/// Most principals one answer lists.
pub const MAX_PRINCIPALS_LISTED: usize = 100_000;
/// Most audit lines one answer carries.
pub const MAX_AUDIT_LINES: usize = 1000;
/// Longest audit line.
pub const MAX_AUDIT_LINE_BYTES: usize = 64 << 10;
/// Longest wait of an audit read for new lines.
pub const MAX_AUDIT_WAIT_MS: u32 = 30_000;
/// Most policies one principal may have.
pub const MAX_POLICIES_PER_PRINCIPAL: usize = 10;

pub const NONCE_BYTES: usize = 32;
pub const SALT_BYTES: usize = 16;
pub const PROOF_BYTES: usize = 32;

/// Whether `name` is a valid principal or policy name.
pub fn is_valid_principal_name(name: &str) -> bool {
    (1..=MAX_PRINCIPAL_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

fn put_fixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
}

fn get_fixed<const N: usize>(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<[u8; N], DecodeError> {
    Ok(r.take(N, field)?.try_into().expect("took N bytes"))
}

fn get_principal_name<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, DecodeError> {
    let name = r.str(MAX_PRINCIPAL_NAME_BYTES, field)?;
    if !is_valid_principal_name(name) {
        return Err(DecodeError::Invalid {
            field,
            reason: "1-128 characters of A-Z a-z 0-9 _ . @ -",
        });
    }
    Ok(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthChallengeRequest<'a> {
    pub access_key_id: &'a str,
    pub client_nonce: [u8; NONCE_BYTES],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthChallengeResponse {
    pub server_nonce: [u8; NONCE_BYTES],
    pub salt: [u8; SALT_BYTES],
    pub iterations: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticateRequest {
    pub proof: [u8; PROOF_BYTES],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticateResponse<'a> {
    pub principal: &'a str,
    /// Proves the server holds the principal's stored key (the client checks it).
    pub server_signature: [u8; PROOF_BYTES],
}

/// A request naming one principal (create, delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrincipalRequest<'a> {
    pub name: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrincipalCreated<'a> {
    pub name: &'a str,
    pub access_key_id: &'a str,
    /// Shown once.
    pub secret: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalInfo<'a> {
    pub name: &'a str,
    pub access_key_id: &'a str,
    pub enabled: bool,
    pub created_ms: i64,
    pub policies: Vec<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPrincipalsResponse<'a> {
    pub principals: Vec<PrincipalInfo<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdatePrincipalRequest<'a> {
    pub name: &'a str,
    pub enabled: bool,
}

/// A request naming one policy of a principal (get, delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRequest<'a> {
    pub principal: &'a str,
    pub policy: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutPolicyRequest<'a> {
    pub principal: &'a str,
    pub policy: &'a str,
    /// An IAM-like JSON document (the server validates it).
    pub document: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDocument<'a> {
    pub document: &'a str,
}

/// Reads the audit trail's newest lines (what the server keeps in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAuditRequest {
    /// The first line wanted; 0: the newest `max_lines`.
    pub from_seq: u64,
    pub max_lines: u32,
    /// With nothing new yet, wait up to this long for a line.
    pub wait_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAuditResponse<'a> {
    /// What to ask for next.
    pub next_seq: u64,
    /// JSON lines, oldest first.
    pub lines: Vec<&'a str>,
}

impl<'a> Payload<'a> for ReadAuditRequest {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        crate::wire::put_u64(out, self.from_seq);
        put_u32(out, self.max_lines);
        put_u32(out, self.wait_ms);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let from_seq = r.u64("from_seq")?;
        let max_lines = r.u32("max_lines")?;
        if max_lines == 0 || max_lines as usize > MAX_AUDIT_LINES {
            return Err(DecodeError::Invalid {
                field: "max_lines",
                reason: "1..=1000",
            });
        }
        let wait_ms = r.u32("wait_ms")?;
        if wait_ms > MAX_AUDIT_WAIT_MS {
            return Err(DecodeError::Invalid {
                field: "wait_ms",
                reason: "at most 30000",
            });
        }
        Ok(ReadAuditRequest {
            from_seq,
            max_lines,
            wait_ms,
        })
    }
}

impl<'a> Payload<'a> for ReadAuditResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        crate::wire::put_u64(out, self.next_seq);
        put_count(out, self.lines.len());
        for l in &self.lines {
            put_str(out, l);
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let next_seq = r.u64("next_seq")?;
        let n = r.count(MAX_AUDIT_LINES, 1, "lines")?;
        let mut lines = Vec::with_capacity(n);
        for _ in 0..n {
            lines.push(r.str(MAX_AUDIT_LINE_BYTES, "line")?);
        }
        Ok(ReadAuditResponse { next_seq, lines })
    }
}

impl<'a> Payload<'a> for AuthChallengeRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.access_key_id);
        put_fixed(out, &self.client_nonce);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let access_key_id = r.str(MAX_ACCESS_KEY_ID_BYTES, "access_key_id")?;
        if access_key_id.is_empty() {
            return Err(DecodeError::Invalid {
                field: "access_key_id",
                reason: "empty",
            });
        }
        Ok(AuthChallengeRequest {
            access_key_id,
            client_nonce: get_fixed(r, "client_nonce")?,
        })
    }
}

impl<'a> Payload<'a> for AuthChallengeResponse {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_fixed(out, &self.server_nonce);
        put_fixed(out, &self.salt);
        put_u32(out, self.iterations);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(AuthChallengeResponse {
            server_nonce: get_fixed(r, "server_nonce")?,
            salt: get_fixed(r, "salt")?,
            iterations: r.u32("iterations")?,
        })
    }
}

impl<'a> Payload<'a> for AuthenticateRequest {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_fixed(out, &self.proof);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(AuthenticateRequest {
            proof: get_fixed(r, "proof")?,
        })
    }
}

impl<'a> Payload<'a> for AuthenticateResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.principal);
        put_fixed(out, &self.server_signature);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(AuthenticateResponse {
            principal: get_principal_name(r, "principal")?,
            server_signature: get_fixed(r, "server_signature")?,
        })
    }
}

impl<'a> Payload<'a> for PrincipalRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.name);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(PrincipalRequest {
            name: get_principal_name(r, "name")?,
        })
    }
}

impl<'a> Payload<'a> for PrincipalCreated<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.name);
        put_str(out, self.access_key_id);
        put_str(out, self.secret);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(PrincipalCreated {
            name: get_principal_name(r, "name")?,
            access_key_id: r.str(MAX_ACCESS_KEY_ID_BYTES, "access_key_id")?,
            secret: r.str(MAX_SECRET_BYTES, "secret")?,
        })
    }
}

/// Smallest encoded principal: a one-byte name, an empty key id, enabled, created_ms and
/// an empty policy list.
const MIN_PRINCIPAL_BYTES: usize = 2 + 1 + 1 + 8 + 1;

impl<'a> Payload<'a> for ListPrincipalsResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_count(out, self.principals.len());
        for p in &self.principals {
            put_str(out, p.name);
            put_str(out, p.access_key_id);
            put_bool(out, p.enabled);
            put_i64(out, p.created_ms);
            put_count(out, p.policies.len());
            for policy in &p.policies {
                put_str(out, policy);
            }
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = r.count(MAX_PRINCIPALS_LISTED, MIN_PRINCIPAL_BYTES, "principals")?;
        let mut principals = Vec::with_capacity(n);
        for _ in 0..n {
            let name = get_principal_name(r, "name")?;
            let access_key_id = r.str(MAX_ACCESS_KEY_ID_BYTES, "access_key_id")?;
            let enabled = r.bool("enabled")?;
            let created_ms = r.i64("created_ms")?;
            let k = r.count(MAX_POLICIES_PER_PRINCIPAL, 2, "policies")?;
            let mut policies = Vec::with_capacity(k);
            for _ in 0..k {
                policies.push(get_principal_name(r, "policy")?);
            }
            principals.push(PrincipalInfo {
                name,
                access_key_id,
                enabled,
                created_ms,
                policies,
            });
        }
        Ok(ListPrincipalsResponse { principals })
    }
}

impl<'a> Payload<'a> for UpdatePrincipalRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.name);
        put_bool(out, self.enabled);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(UpdatePrincipalRequest {
            name: get_principal_name(r, "name")?,
            enabled: r.bool("enabled")?,
        })
    }
}

impl<'a> Payload<'a> for PolicyRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.principal);
        put_str(out, self.policy);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(PolicyRequest {
            principal: get_principal_name(r, "principal")?,
            policy: get_principal_name(r, "policy")?,
        })
    }
}

impl<'a> Payload<'a> for PutPolicyRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.principal);
        put_str(out, self.policy);
        put_str(out, self.document);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(PutPolicyRequest {
            principal: get_principal_name(r, "principal")?,
            policy: get_principal_name(r, "policy")?,
            document: r.str(MAX_POLICY_DOCUMENT_BYTES, "document")?,
        })
    }
}

impl<'a> Payload<'a> for PolicyDocument<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.document);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(PolicyDocument {
            document: r.str(MAX_POLICY_DOCUMENT_BYTES, "document")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::testkit::{check_request, check_response};
    use crate::message::{Request, Response};

    #[test]
    fn golden_bytes() {
        let out = check_request(&Request::AuthChallenge(AuthChallengeRequest {
            access_key_id: "K",
            client_nonce: [7; 32],
        }));
        let mut expected = vec![
            16 + 2 + 32,
            0,
            0,
            0,
            1,
            0,
            2,
            0,
            1,
            0,
            0,
            0,
            0,
            0xee,
            0xff,
            0xc0,
            1,
            b'K',
        ];
        expected.extend_from_slice(&[7; 32]);
        assert_eq!(out, expected);
        let out = check_response(&Response::AuthChallenge(AuthChallengeResponse {
            server_nonce: [1; 32],
            salt: [2; 16],
            iterations: 4096,
        }));
        assert_eq!(out[..8], [16 + 52, 0, 0, 0, 1, 1, 2, 0]);
        assert_eq!(out[16..48], [1; 32]);
        assert_eq!(out[48..64], [2; 16]);
        assert_eq!(out[64..], [0, 0x10, 0, 0]);
        let out = check_request(&Request::Authenticate(AuthenticateRequest {
            proof: [9; 32],
        }));
        assert_eq!(out[..8], [48, 0, 0, 0, 1, 0, 3, 0]);
        assert_eq!(out[16..], [9; 32]);
        let out = check_response(&Response::Authenticate(AuthenticateResponse {
            principal: "ops",
            server_signature: [3; 32],
        }));
        assert_eq!(out[16..20], [3, b'o', b'p', b's']);
        assert_eq!(out[20..], [3; 32]);
        let out = check_request(&Request::PutPolicy(PutPolicyRequest {
            principal: "ops",
            policy: "p",
            document: "{}",
        }));
        #[rustfmt::skip]
        let expected = [
            16 + 9, 0, 0, 0,  1,  0,  64, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            3, b'o', b'p', b's',  1, b'p',  2, b'{', b'}',
        ];
        assert_eq!(out, expected);
        let out = check_response(&Response::ListPrincipals(ListPrincipalsResponse {
            principals: vec![PrincipalInfo {
                name: "a",
                access_key_id: "K",
                enabled: true,
                created_ms: 5,
                policies: vec!["p"],
            }],
        }));
        #[rustfmt::skip]
        let expected = [
            16 + 17, 0, 0, 0,  1,  1,  61, 0,  42, 0, 0, 0, 0, 0, 0, 0,
            1,                          // one principal
            1, b'a',  1, b'K',  1,      // name, key id, enabled
            5, 0, 0, 0, 0, 0, 0, 0,     // created_ms
            1, 1, b'p',                 // policies
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn every_message_round_trips() {
        check_request(&Request::CreatePrincipal(PrincipalRequest {
            name: "svc.clicks@eu-1",
        }));
        check_request(&Request::ListPrincipals);
        check_request(&Request::UpdatePrincipal(UpdatePrincipalRequest {
            name: "a",
            enabled: false,
        }));
        check_request(&Request::DeletePrincipal(PrincipalRequest { name: "a" }));
        check_request(&Request::GetPolicy(PolicyRequest {
            principal: "a",
            policy: "read-only",
        }));
        check_request(&Request::DeletePolicy(PolicyRequest {
            principal: "a",
            policy: "read-only",
        }));
        check_response(&Response::CreatePrincipal(PrincipalCreated {
            name: "a",
            access_key_id: "SPAKABCDEFGHIJKLMNOP",
            secret: "s3cr3t",
        }));
        check_response(&Response::ListPrincipals(ListPrincipalsResponse {
            principals: vec![],
        }));
        check_request(&Request::ReadAudit(ReadAuditRequest {
            from_seq: 0,
            max_lines: 20,
            wait_ms: 1000,
        }));
        check_response(&Response::ReadAudit(ReadAuditResponse {
            next_seq: 8,
            lines: vec![r#"{"seq":7}"#],
        }));
        let mut payload = Vec::new();
        ReadAuditRequest {
            from_seq: 1,
            max_lines: 1001,
            wait_ms: 0,
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(70, &payload).is_err());
        check_response(&Response::GetPolicy(PolicyDocument {
            document: r#"{"Statement":[]}"#,
        }));
        for r in [
            Response::UpdatePrincipal,
            Response::DeletePrincipal,
            Response::PutPolicy,
            Response::DeletePolicy,
        ] {
            check_response(&r);
        }
    }

    #[test]
    fn names_and_sizes_are_checked() {
        assert!(is_valid_principal_name("svc.clicks@eu-1_x"));
        assert!(!is_valid_principal_name(""));
        assert!(!is_valid_principal_name("a b"));
        assert!(!is_valid_principal_name(&"a".repeat(129)));
        let mut payload = Vec::new();
        PrincipalRequest { name: "a b" }.encode_payload(&mut payload);
        assert!(Request::decode(60, &payload).is_err());
        let mut payload = Vec::new();
        AuthChallengeRequest {
            access_key_id: "",
            client_nonce: [0; 32],
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(2, &payload).is_err());
        let big = "x".repeat(MAX_POLICY_DOCUMENT_BYTES + 1);
        let mut payload = Vec::new();
        PutPolicyRequest {
            principal: "a",
            policy: "p",
            document: &big,
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(64, &payload).is_err());
        // A proof cut short is an error, not a panic.
        assert!(Request::decode(3, &[0; 31]).is_err());
    }
}
