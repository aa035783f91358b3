//! Authentication and authorization, the pure core: who the principals are, how their
//! secrets are checked, and what their policies let them do. No I/O and no async here:
//! the server drives it and persists what it says to persist.
//!
//! - [`store`]: [`AuthStore`], the principals (name, access key id, SCRAM credentials —
//!   never the secret — enabled flag, attached policies) and the file `<data>/auth.bin`
//!   they survive restarts in. It answers the challenge parameters for an access key id
//!   (with a stable fake salt for unknown ones) and the [`Decision`] for a principal, an
//!   action and a stream.
//! - [`policy`]: IAM-like policy documents, parsed and compiled once, evaluated without
//!   allocation.
//! - The challenge–response mathematics lives in the protocol crate
//!   ([`spate_protocol::scram`]), since the client library needs it too.
//!
//! # Ownership and concurrency
//!
//! One [`AuthStore`] exists per server, held like the catalog by whoever serves control
//! requests; it is plain data behind `&mut self`, not shared between threads. Every
//! mutation raises [`AuthStore::changes`]: the caller writes [`AuthStore::encoded`]
//! atomically before it answers the request that changed it (as it does for
//! `fanout.bin`). The same counter tells connections that their cached decisions are stale
//! (a disabled principal, a changed policy): a connection that caches decisions keeps the
//! `changes` value they were made under and drops them when it moves.

pub mod policy;
pub mod store;

use rustc_hash::FxHashMap;

pub use policy::{
    evaluate, Decision, Effect, PolicyDocument, ACTIONS, NO_STREAM, STREAMLESS_ACTIONS,
};
pub use store::{AuthStore, Principal, PrincipalView, AUTH_FILE};

/// A connection's cached decisions, by action and resource, valid for one version of the
/// principals and policies: what the request path pays per request with authorization on
/// (two Fx hash look-ups, no allocation on a hit).
#[derive(Debug, Default)]
pub struct DecisionCache {
    version: u64,
    by_action: FxHashMap<&'static str, FxHashMap<Box<str>, Decision>>,
}

impl DecisionCache {
    /// The cached decision, if it was made under `version`; a cache of another version is
    /// emptied and answers `None`.
    pub fn get(&mut self, version: u64, action: &str, resource: &str) -> Option<Decision> {
        if self.version != version {
            self.by_action.clear();
            self.version = version;
            return None;
        }
        self.by_action.get(action)?.get(resource).copied()
    }

    /// Keeps a decision made under `version` (dropped if the cache moved on meanwhile).
    pub fn insert(&mut self, version: u64, action: &'static str, resource: &str, d: Decision) {
        if self.version == version {
            self.by_action
                .entry(action)
                .or_default()
                .insert(Box::from(resource), d);
        }
    }

    /// Forgets everything (the connection's principal changed).
    pub fn clear(&mut self) {
        self.by_action.clear();
    }
}

/// What an auth administration request can fail with. The server maps these to wire error
/// codes at its one boundary; the messages are meant for the person who made the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No principal has this name.
    #[error("principal {0:?} does not exist")]
    UnknownPrincipal(String),
    /// A principal with this name exists already.
    #[error("principal {0:?} already exists")]
    PrincipalExists(String),
    /// The principal has no policy of this name.
    #[error("principal {principal:?} has no policy {policy:?}")]
    UnknownPolicy {
        /// The principal named.
        principal: String,
        /// The policy name that is not attached to it.
        policy: String,
    },
    /// The policy document does not parse or validate; the message says where and why.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    /// A principal or policy name breaks the naming rule; the message says which rule.
    #[error("{0}")]
    InvalidName(String),
    /// A bound on principals or policies is reached; nothing was changed.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
}
