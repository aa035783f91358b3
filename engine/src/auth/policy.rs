//! IAM-like policy documents: what a principal may do to which streams.
//!
//! A document is JSON in IAM's shape:
//!
//! ```json
//! {
//!   "Version": "2026-12-01",
//!   "Statement": [
//!     {"Sid": "ReadClicks", "Effect": "Allow",
//!      "Action": ["spate:GetShardIterator", "spate:GetRecords"], "Resource": "clicks-*"},
//!     {"Effect": "Deny", "Action": "spate:Delete*", "Resource": "*"}
//!   ]
//! }
//! ```
//!
//! - `Version` is optional; when present it must be [`POLICY_VERSION`].
//! - `Action` and `Resource` are a string or an array of strings. An action is one of
//!   [`ACTIONS`] or a glob over them (`spate:*`, `spate:Get*`; matched without regard to
//!   case, as IAM does); a pattern that matches no action is refused, so a typo is an error
//!   rather than a statement that silently never applies.
//! - A resource is a stream-name pattern with `*` (any run) and `?` (one character).
//!   Actions that concern no stream ([`STREAMLESS_ACTIONS`]: listing streams, administering
//!   principals and policies, reading the audit trail) are evaluated against the resource
//!   [`NO_STREAM`] (`"*"`), which only the pattern `*` covers: `clicks-*` grants nothing
//!   beyond the streams it names.
//!
//! Evaluation ([`evaluate`]) is IAM's: an explicit `Deny` that matches wins over any
//! `Allow`; without a matching `Allow` the answer is an implicit deny.
//!
//! Parsing does all the work evaluation can be spared: each statement's actions become a
//! bit mask over [`ACTIONS`] and its resource patterns are compiled (exact name, prefix, or
//! glob), so [`evaluate`] allocates nothing and costs one action lookup plus, per statement,
//! a mask test and the pattern matches. Callers still cache its answers per connection and
//! stream; it runs when a connection first does an action to a stream.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The one `Version` a document may name (it may also name none).
pub const POLICY_VERSION: &str = "2026-12-01";
/// The largest document accepted, in bytes of JSON text.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// The most statements a document may hold.
pub const MAX_STATEMENTS: usize = 100;
/// The longest resource or action pattern accepted, in bytes: a stream name is at most 128
/// bytes, so a longer pattern could only be stars, and long patterns make matching slower.
pub const MAX_PATTERN_BYTES: usize = 256;
/// The resource that actions concerning no stream are evaluated against. No stream name
/// contains `*`, so it cannot be mistaken for a stream.
pub const NO_STREAM: &str = "*";

/// Every action a policy can name, in a fixed order (bit `i` of a statement's mask is
/// `ACTIONS[i]`; the order is not persisted, documents are kept as text).
pub const ACTIONS: &[&str] = &[
    "spate:CreateStream",
    "spate:DeleteStream",
    "spate:ListStreams",
    "spate:DescribeStream",
    "spate:UpdateRetention",
    "spate:SplitShard",
    "spate:MergeShards",
    "spate:UpdateShardCount",
    "spate:UpdateStreamMode",
    "spate:EnableEnhancedMonitoring",
    "spate:DisableEnhancedMonitoring",
    "spate:PutRecord",
    "spate:PutRecords",
    "spate:GetShardIterator",
    "spate:GetRecords",
    "spate:RegisterStreamConsumer",
    "spate:DeregisterStreamConsumer",
    "spate:ListStreamConsumers",
    "spate:DescribeStreamConsumer",
    "spate:Subscribe",
    "spate:GroupHeartbeat",
    "spate:Checkpoint",
    "spate:DescribeGroup",
    "spate:DeleteGroup",
    "spate:ListGroups",
    "spate:CreatePrincipal",
    "spate:ListPrincipals",
    // Disables and enables a principal.
    "spate:UpdatePrincipal",
    "spate:DeletePrincipal",
    "spate:PutPolicy",
    "spate:GetPolicy",
    "spate:DeletePolicy",
    "spate:ReadAudit",
    "spate:StartStreamEncryption",
    "spate:StopStreamEncryption",
    // Re-reads the master keys and re-wraps every data key.
    "spate:RotateKeys",
];

/// The actions that concern no stream: they are evaluated against [`NO_STREAM`].
pub const STREAMLESS_ACTIONS: &[&str] = &[
    "spate:ListStreams",
    "spate:CreatePrincipal",
    "spate:ListPrincipals",
    "spate:UpdatePrincipal",
    "spate:DeletePrincipal",
    "spate:PutPolicy",
    "spate:GetPolicy",
    "spate:DeletePolicy",
    "spate:ReadAudit",
    "spate:RotateKeys",
];

// A statement's actions are a u64 mask.
const _: () = assert!(ACTIONS.len() <= 64);

/// The position of `action` in [`ACTIONS`] (exact spelling, or differing only in ASCII
/// case); `None` for a name that is not an action.
pub fn action_index(action: &str) -> Option<usize> {
    ACTIONS
        .iter()
        .position(|a| *a == action)
        .or_else(|| ACTIONS.iter().position(|a| a.eq_ignore_ascii_case(action)))
}

/// Whether `action` concerns a stream (and so is evaluated against the stream's name)
/// rather than against [`NO_STREAM`].
pub fn concerns_stream(action: &str) -> bool {
    !STREAMLESS_ACTIONS
        .iter()
        .any(|a| a.eq_ignore_ascii_case(action))
}

/// What a statement does when it matches.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Effect {
    /// Grants the action, unless a matching `Deny` exists.
    Allow,
    /// Refuses the action, whatever else allows it.
    Deny,
}

/// The answer to "may this principal do this action to this resource".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    /// A statement allows it and none denies it.
    Allow,
    /// A `Deny` statement matches.
    ExplicitDeny,
    /// No statement allows it (or the principal is unknown).
    ImplicitDeny,
    /// The principal exists but is disabled: nothing is allowed. Only
    /// [`AuthStore::decide`](super::AuthStore::decide) answers it; [`evaluate`] never does.
    PrincipalDisabled,
    /// The principal a connection authenticated as is gone: deleted, or deleted and made
    /// again (new access key and secret, which the connection never proved). Answered on
    /// the request path only; a new connection must authenticate.
    PrincipalGone,
}

impl Decision {
    /// Whether the action may go ahead.
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// One compiled resource pattern. Runs of `*` are collapsed when compiling, so `**` is
/// [`ResourcePattern::Any`] too.
#[derive(Clone, PartialEq, Eq, Debug)]
enum ResourcePattern {
    /// `*`: every stream and [`NO_STREAM`].
    Any,
    /// No wildcard: exactly this stream.
    Exact(Box<str>),
    /// `prefix*` with no other wildcard.
    Prefix(Box<str>),
    /// Anything else; matched by [`glob_match`].
    Glob(Box<str>),
}

impl ResourcePattern {
    fn compile(pattern: &str) -> ResourcePattern {
        let mut collapsed = String::with_capacity(pattern.len());
        for c in pattern.chars() {
            if !(c == '*' && collapsed.ends_with('*')) {
                collapsed.push(c);
            }
        }
        let wildcards = collapsed
            .bytes()
            .filter(|b| matches!(b, b'*' | b'?'))
            .count();
        if collapsed == "*" {
            ResourcePattern::Any
        } else if wildcards == 0 {
            ResourcePattern::Exact(collapsed.into())
        } else if wildcards == 1 && collapsed.ends_with('*') {
            collapsed.pop();
            ResourcePattern::Prefix(collapsed.into())
        } else {
            ResourcePattern::Glob(collapsed.into())
        }
    }

    fn matches(&self, resource: &str) -> bool {
        if resource == NO_STREAM {
            return *self == ResourcePattern::Any;
        }
        match self {
            ResourcePattern::Any => true,
            ResourcePattern::Exact(name) => **name == *resource,
            ResourcePattern::Prefix(prefix) => resource.starts_with(&**prefix),
            ResourcePattern::Glob(glob) => glob_match(glob.as_bytes(), resource.as_bytes(), false),
        }
    }
}

/// One statement of a document, compiled.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Statement {
    sid: Option<String>,
    effect: Effect,
    actions: Vec<String>,
    resources: Vec<String>,
    /// Bit `i` set: the statement covers `ACTIONS[i]`.
    action_mask: u64,
    patterns: Vec<ResourcePattern>,
}

impl Statement {
    /// The statement's `Sid`, if it has one.
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    /// Allow or deny.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// The action patterns as written.
    pub fn actions(&self) -> &[String] {
        &self.actions
    }

    /// The resource patterns as written.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }

    /// Whether the statement covers `ACTIONS[action_index]` on `resource`.
    fn matches(&self, action_bit: u64, resource: &str) -> bool {
        self.action_mask & action_bit != 0 && self.patterns.iter().any(|p| p.matches(resource))
    }
}

/// A parsed, validated policy document; see the module docs for its shape.
///
/// Equality compares what the document says (version and statements), not its text.
#[derive(Clone, Debug)]
pub struct PolicyDocument {
    version: Option<String>,
    statements: Vec<Statement>,
    source: String,
}

impl PartialEq for PolicyDocument {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.statements == other.statements
    }
}

impl Eq for PolicyDocument {}

impl PolicyDocument {
    /// Parses and validates `text`; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<PolicyDocument, String> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(format!(
                "the policy document is {} bytes; the most allowed is {MAX_POLICY_BYTES}",
                text.len()
            ));
        }
        let raw: RawDocument = serde_json::from_str(text)
            .map_err(|e| format!("the policy document is not valid: {e}"))?;
        if let Some(v) = &raw.version {
            if v != POLICY_VERSION {
                return Err(format!(
                    "Version {v:?} is not supported (use {POLICY_VERSION:?} or leave it out)"
                ));
            }
        }
        if raw.statement.is_empty() {
            return Err("Statement is empty: a policy needs at least one statement".into());
        }
        if raw.statement.len() > MAX_STATEMENTS {
            return Err(format!(
                "the policy has {} statements; the most allowed is {MAX_STATEMENTS}",
                raw.statement.len()
            ));
        }
        let statements = raw
            .statement
            .into_iter()
            .enumerate()
            .map(|(i, s)| compile_statement(s).map_err(|why| format!("Statement[{i}]: {why}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PolicyDocument {
            version: raw.version,
            statements,
            source: text.to_owned(),
        })
    }

    /// The canonical JSON text: IAM's key order, `Action` and `Resource` always arrays, no
    /// white space. Parsing it gives an equal document.
    pub fn to_json(&self) -> String {
        let doc = CanonicalDocument {
            version: self.version.as_deref(),
            statement: self
                .statements
                .iter()
                .map(|s| CanonicalStatement {
                    sid: s.sid.as_deref(),
                    effect: s.effect,
                    action: &s.actions,
                    resource: &s.resources,
                })
                .collect(),
        };
        serde_json::to_string(&doc).expect("a policy document serializes")
    }

    /// The text the document was parsed from, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `Version` the document names, if any.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The statements, in the document's order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }
}

/// The decision of `policies` together for `action` on `resource` (a stream name, or
/// [`NO_STREAM`] for an action that concerns no stream; for the actions in
/// [`STREAMLESS_ACTIONS`] `resource` is ignored and [`NO_STREAM`] used). An explicit deny in any policy
/// wins; no matching allow is [`Decision::ImplicitDeny`], and so is an action that is not
/// in [`ACTIONS`]. Allocates nothing.
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a PolicyDocument>,
    action: &str,
    resource: &str,
) -> Decision {
    let Some(index) = action_index(action) else {
        return Decision::ImplicitDeny;
    };
    let bit = 1u64 << index;
    // Whatever the caller passed, an action that names no stream is judged as one, so a
    // stream pattern can never grant it.
    let resource = if STREAMLESS_ACTIONS.contains(&ACTIONS[index]) {
        NO_STREAM
    } else {
        resource
    };
    let mut allowed = false;
    for policy in policies {
        for statement in &policy.statements {
            // Once allowed, only a deny can change the answer.
            if allowed && statement.effect == Effect::Allow {
                continue;
            }
            if statement.matches(bit, resource) {
                match statement.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

fn compile_statement(raw: RawStatement) -> Result<Statement, String> {
    let effect = raw.effect;
    let actions = raw.action.0;
    let resources = raw.resource.0;
    if actions.is_empty() {
        return Err("Action is empty: name at least one action".into());
    }
    if resources.is_empty() {
        return Err("Resource is empty: name at least one stream pattern".into());
    }
    let mut action_mask = 0u64;
    for action in &actions {
        action_mask |= compile_action(action)?;
    }
    let patterns = resources
        .iter()
        .map(|r| {
            validate_resource(r)?;
            Ok(ResourcePattern::compile(r))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Statement {
        sid: raw.sid,
        effect,
        actions,
        resources,
        action_mask,
        patterns,
    })
}

/// The mask of [`ACTIONS`] that `pattern` covers; an error when it covers none.
fn compile_action(pattern: &str) -> Result<u64, String> {
    let well_formed = !pattern.is_empty()
        && pattern.len() <= MAX_PATTERN_BYTES
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'*' | b'?'));
    if !well_formed {
        return Err(format!(
            "Action {pattern:?} is not an action pattern (like \"spate:PutRecords\" or \"spate:Get*\")"
        ));
    }
    let mask = ACTIONS
        .iter()
        .enumerate()
        .filter(|(_, a)| glob_match(pattern.as_bytes(), a.as_bytes(), true))
        .fold(0u64, |m, (i, _)| m | 1 << i);
    if mask == 0 {
        return Err(format!(
            "Action {pattern:?} matches no action (actions are spate:CreateStream, spate:PutRecords, spate:GetRecords, ...; see the policy reference)"
        ));
    }
    Ok(mask)
}

fn validate_resource(pattern: &str) -> Result<(), String> {
    let well_formed = !pattern.is_empty()
        && pattern.len() <= MAX_PATTERN_BYTES
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*' | b'?'));
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "Resource {pattern:?} is not a stream-name pattern (1-{MAX_PATTERN_BYTES} characters of A-Z a-z 0-9 _ . - with the wildcards * and ?)"
        ))
    }
}

/// Whether `text` matches the glob `pattern` (`*`: any run, `?`: any one byte), comparing
/// other bytes exactly or, with `ignore_case`, without regard to ASCII case. Iterative with
/// one backtrack point: O(len(pattern) × len(text)) at worst, no allocation.
fn glob_match(pattern: &[u8], text: &[u8], ignore_case: bool) -> bool {
    let same = |p: u8, t: u8| p == b'?' || p == t || (ignore_case && p.eq_ignore_ascii_case(&t));
    let (mut p, mut t) = (0, 0);
    // The last star seen: its position in the pattern and the text position it now covers
    // up to. A mismatch retries with the star covering one more byte.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && same(pattern[p], text[t]) {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

// ---- serde shapes ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(rename = "Version", default)]
    version: Option<String>,
    #[serde(rename = "Statement")]
    statement: Vec<RawStatement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatement {
    #[serde(rename = "Sid", default)]
    sid: Option<String>,
    #[serde(rename = "Effect")]
    effect: Effect,
    #[serde(rename = "Action")]
    action: StringOrList,
    #[serde(rename = "Resource")]
    resource: StringOrList,
}

/// `"x"` or `["x", "y"]`.
struct StringOrList(Vec<String>);

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = Vec<String>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(vec![v.to_owned()])
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_any(ListVisitor).map(StringOrList)
    }
}

#[derive(Serialize)]
struct CanonicalDocument<'a> {
    #[serde(rename = "Version", skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(rename = "Statement")]
    statement: Vec<CanonicalStatement<'a>>,
}

#[derive(Serialize)]
struct CanonicalStatement<'a> {
    #[serde(rename = "Sid", skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    #[serde(rename = "Effect")]
    effect: Effect,
    #[serde(rename = "Action")]
    action: &'a [String],
    #[serde(rename = "Resource")]
    resource: &'a [String],
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc(text: &str) -> PolicyDocument {
        PolicyDocument::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        PolicyDocument::parse(text).expect_err(text)
    }

    fn decide(docs: &[&PolicyDocument], action: &str, resource: &str) -> Decision {
        evaluate(docs.iter().copied(), action, resource)
    }

    #[test]
    fn the_action_list_is_complete_and_unique() {
        assert_eq!(ACTIONS.len(), 36);
        for (i, a) in ACTIONS.iter().enumerate() {
            assert!(a.starts_with("spate:"), "{a}");
            assert_eq!(action_index(a), Some(i));
        }
        for a in STREAMLESS_ACTIONS {
            assert!(ACTIONS.contains(a), "{a}");
            assert!(!concerns_stream(a));
        }
        assert!(concerns_stream("spate:PutRecords") && concerns_stream("spate:ListGroups"));
        assert_eq!(
            action_index("SPATE:putrecords"),
            action_index("spate:PutRecords")
        );
        assert_eq!(action_index("spate:Nope"), None);
    }

    #[test]
    fn an_iam_shaped_document_parses_with_strings_or_arrays() {
        let d = doc(r#"{
            "Version": "2026-12-01",
            "Statement": [
                {"Sid": "w", "Effect": "Allow", "Action": "spate:PutRecords", "Resource": "clicks-*"},
                {"Effect": "Deny", "Action": ["spate:Delete*", "spate:Update*"], "Resource": ["a", "b?"]}
            ]
        }"#);
        assert_eq!(d.version(), Some(POLICY_VERSION));
        assert_eq!(d.statements().len(), 2);
        let s = &d.statements()[0];
        assert_eq!((s.sid(), s.effect()), (Some("w"), Effect::Allow));
        assert_eq!(s.actions(), ["spate:PutRecords"]);
        assert_eq!(s.resources(), ["clicks-*"]);
        assert_eq!(d.statements()[1].actions().len(), 2);
        assert!(d.source().contains("clicks-*"));
    }

    #[test]
    fn malformed_documents_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            (r#"{"Statement": []}"#, "Statement is empty"),
            (r#"{}"#, "Statement"),
            (r#"not json"#, "not valid"),
            (
                r#"{"Statement": [{"Action": "spate:*", "Resource": "*"}]}"#,
                "Effect",
            ),
            (
                r#"{"Statement": [{"Effect": "allow", "Action": "spate:*", "Resource": "*"}]}"#,
                "allow",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Action": "spate:PutRecordz", "Resource": "*"}]}"#,
                "spate:PutRecordz",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}"#,
                "s3:GetObject",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]}"#,
                "Action is empty",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Action": "spate:*", "Resource": []}]}"#,
                "Resource is empty",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Action": "spate:*", "Resource": "arn:aws:x"}]}"#,
                "arn:aws:x",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Action": 7, "Resource": "*"}]}"#,
                "a string or an array of strings",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Action": "spate:*", "Resource": "*", "Condition": {}}]}"#,
                "Condition",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Action": "spate:*", "Resource": "*"}], "Id": "x"}"#,
                "Id",
            ),
            (
                r#"{"Statement": [{"Effect": "Allow", "Effect": "Deny", "Action": "spate:*", "Resource": "*"}]}"#,
                "duplicate field",
            ),
            (
                r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "spate:*", "Resource": "*"}]}"#,
                "2012-10-17",
            ),
        ];
        for (text, needle) in cases {
            let e = err(text);
            assert!(e.contains(needle), "{text}: {e:?} lacks {needle:?}");
        }
        // The statement at fault is named.
        let e = err(
            r#"{"Statement": [{"Effect": "Allow", "Action": "spate:*", "Resource": "*"},
                              {"Effect": "Allow", "Action": "spate:Nope", "Resource": "*"}]}"#,
        );
        assert!(e.starts_with("Statement[1]:"), "{e}");
    }

    #[test]
    fn size_and_statement_bounds_are_enforced() {
        let statement = r#"{"Effect": "Allow", "Action": "spate:GetRecords", "Resource": "s"}"#;
        let many = |n: usize| format!(r#"{{"Statement": [{}]}}"#, vec![statement; n].join(","));
        doc(&many(MAX_STATEMENTS));
        assert!(err(&many(MAX_STATEMENTS + 1)).contains("statements"));
        let padded = format!(
            r#"{{"Statement": [{statement}]}}{}"#,
            " ".repeat(MAX_POLICY_BYTES)
        );
        assert!(err(&padded).contains("bytes"));
        let long = format!(
            r#"{{"Statement": [{{"Effect": "Allow", "Action": "spate:*", "Resource": "{}"}}]}}"#,
            "a".repeat(MAX_PATTERN_BYTES + 1)
        );
        assert!(err(&long).contains("not a stream-name pattern"));
    }

    #[test]
    fn canonical_json_reparses_to_the_same_document() {
        for text in [
            r#"{"Statement": [{"Effect": "Allow", "Action": "spate:*", "Resource": "*"}]}"#,
            r#"{"Version": "2026-12-01", "Statement": [
                {"Sid": "a", "Effect": "Deny", "Action": ["spate:Get*", "spate:PutRecord"],
                 "Resource": ["x", "y*", "?z"]}]}"#,
        ] {
            let d = doc(text);
            let canonical = d.to_json();
            let again = doc(&canonical);
            assert_eq!(again, d);
            assert_eq!(again.to_json(), canonical, "canonical is a fixed point");
        }
        assert_eq!(
            doc(r#"{"Statement":[{"Effect":"Allow","Action":"spate:*","Resource":"*"}]}"#)
                .to_json(),
            r#"{"Statement":[{"Effect":"Allow","Action":["spate:*"],"Resource":["*"]}]}"#
        );
    }

    #[test]
    fn explicit_deny_wins_and_no_allow_is_an_implicit_deny() {
        let allow = doc(
            r#"{"Statement": [{"Effect": "Allow", "Action": "spate:*", "Resource": "clicks-*"}]}"#,
        );
        let deny = doc(
            r#"{"Statement": [{"Effect": "Deny", "Action": "spate:DeleteStream", "Resource": "clicks-prod"}]}"#,
        );
        assert_eq!(
            decide(&[&allow], "spate:PutRecords", "clicks-a"),
            Decision::Allow
        );
        assert_eq!(
            decide(&[&allow, &deny], "spate:DeleteStream", "clicks-a"),
            Decision::Allow
        );
        assert_eq!(
            decide(&[&allow, &deny], "spate:DeleteStream", "clicks-prod"),
            Decision::ExplicitDeny
        );
        assert_eq!(
            decide(&[&deny, &allow], "spate:DeleteStream", "clicks-prod"),
            Decision::ExplicitDeny
        );
        assert_eq!(
            decide(&[&allow], "spate:PutRecords", "views"),
            Decision::ImplicitDeny
        );
        assert_eq!(
            decide(&[], "spate:PutRecords", "clicks-a"),
            Decision::ImplicitDeny
        );
        assert_eq!(
            decide(&[&allow], "spate:Unknown", "clicks-a"),
            Decision::ImplicitDeny
        );
        assert!(Decision::Allow.is_allowed() && !Decision::ExplicitDeny.is_allowed());
    }

    #[test]
    fn only_the_star_pattern_covers_actions_that_name_no_stream() {
        for pattern in ["*", "**"] {
            let d = doc(&format!(
                r#"{{"Statement": [{{"Effect": "Allow", "Action": "spate:*", "Resource": "{pattern}"}}]}}"#
            ));
            assert_eq!(
                decide(&[&d], "spate:ListStreams", NO_STREAM),
                Decision::Allow
            );
        }
        for pattern in ["?", "*?", "c*", "*-*", "x"] {
            let d = doc(&format!(
                r#"{{"Statement": [{{"Effect": "Allow", "Action": "spate:*", "Resource": "{pattern}"}}]}}"#
            ));
            assert_eq!(
                decide(&[&d], "spate:ListStreams", NO_STREAM),
                Decision::ImplicitDeny,
                "{pattern}"
            );
            // Naming a stream does not let a stream pattern grant a streamless action.
            assert_eq!(
                decide(&[&d], "spate:ReadAudit", "x"),
                Decision::ImplicitDeny,
                "{pattern}"
            );
        }
    }

    #[test]
    fn action_globs_cover_the_actions_they_name() {
        let get =
            doc(r#"{"Statement": [{"Effect": "Allow", "Action": "spate:Get*", "Resource": "*"}]}"#);
        assert_eq!(decide(&[&get], "spate:GetRecords", "s"), Decision::Allow);
        assert_eq!(
            decide(&[&get], "spate:GetShardIterator", "s"),
            Decision::Allow
        );
        assert_eq!(
            decide(&[&get], "spate:GetPolicy", NO_STREAM),
            Decision::Allow
        );
        assert_eq!(
            decide(&[&get], "spate:PutRecords", "s"),
            Decision::ImplicitDeny
        );
        let any_case = doc(
            r#"{"Statement": [{"Effect": "Allow", "Action": "SPATE:putrecord?", "Resource": "*"}]}"#,
        );
        assert_eq!(
            decide(&[&any_case], "spate:PutRecords", "s"),
            Decision::Allow
        );
        assert_eq!(
            decide(&[&any_case], "spate:PutRecord", "s"),
            Decision::ImplicitDeny
        );
        let bare = doc(r#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}"#);
        for a in ACTIONS {
            assert_eq!(decide(&[&bare], a, "s"), Decision::Allow);
        }
    }

    #[test]
    fn resource_patterns_compile_to_the_cheapest_matcher() {
        use ResourcePattern::*;
        assert_eq!(ResourcePattern::compile("*"), Any);
        assert_eq!(ResourcePattern::compile("***"), Any);
        assert_eq!(ResourcePattern::compile("a.b"), Exact("a.b".into()));
        assert_eq!(ResourcePattern::compile("a**"), Prefix("a".into()));
        assert_eq!(ResourcePattern::compile("a?*"), Glob("a?*".into()));
        assert_eq!(ResourcePattern::compile("*a"), Glob("*a".into()));
        for (pattern, name, hit) in [
            ("clicks-*", "clicks-", true),
            ("clicks-*", "clicks", false),
            ("*-prod", "a-prod", true),
            ("*-prod", "a-prod2", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxcyyb", false),
            ("exact", "exact", true),
            ("exact", "exacto", false),
        ] {
            assert_eq!(
                ResourcePattern::compile(pattern).matches(name),
                hit,
                "{pattern} {name}"
            );
        }
    }

    // ---- properties ----------------------------------------------------------------

    /// A naive reference: recursive glob, no compilation, no shortcuts.
    fn reference(docs: &[PolicyDocument], action: &str, resource: &str) -> Decision {
        fn glob(p: &[u8], t: &[u8], ci: bool) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some(b'*'), _) => glob(&p[1..], t, ci) || (!t.is_empty() && glob(p, &t[1..], ci)),
                (Some(&pc), Some(&tc)) => {
                    (pc == b'?' || pc == tc || (ci && pc.eq_ignore_ascii_case(&tc)))
                        && glob(&p[1..], &t[1..], ci)
                }
                _ => false,
            }
        }
        if !ACTIONS.iter().any(|a| a.eq_ignore_ascii_case(action)) {
            return Decision::ImplicitDeny;
        }
        let resource = if concerns_stream(action) {
            resource
        } else {
            NO_STREAM
        };
        let resource_ok = |r: &String| {
            if resource == NO_STREAM {
                r.bytes().all(|b| b == b'*')
            } else {
                glob(r.as_bytes(), resource.as_bytes(), false)
            }
        };
        let matching: Vec<Effect> = docs
            .iter()
            .flat_map(|d| d.statements())
            .filter(|s| {
                s.actions()
                    .iter()
                    .any(|a| glob(a.as_bytes(), action.as_bytes(), true))
                    && s.resources().iter().any(resource_ok)
            })
            .map(|s| s.effect())
            .collect();
        if matching.contains(&Effect::Deny) {
            Decision::ExplicitDeny
        } else if matching.contains(&Effect::Allow) {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }

    const ACTION_PATTERNS: &[&str] = &[
        "spate:*",
        "*",
        "spate:Get*",
        "spate:PutRecord",
        "spate:PutRecord?",
        "spate:*Stream",
        "spate:*Group*",
        "spate:ListStreams",
        "spate:ReadAudit",
        "SPATE:getrecords",
    ];
    const RESOURCE_PATTERNS: &[&str] = &[
        "*", "**", "a*", "a?c", "abc", "*c", "a*c*", "b", "?", "*b*", "ab?*",
    ];
    const RESOURCES: &[&str] = &["abc", "ab", "a", "b", "bc", "abcc", "xbx", NO_STREAM];
    const QUERY_ACTIONS: &[&str] = &[
        "spate:GetRecords",
        "spate:PutRecord",
        "spate:PutRecords",
        "spate:CreateStream",
        "spate:ListStreams",
        "spate:DeleteGroup",
        "spate:ReadAudit",
        "spate:NotAnAction",
    ];

    fn statement_json() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            prop::collection::vec(prop::sample::select(ACTION_PATTERNS), 1..3),
            prop::collection::vec(prop::sample::select(RESOURCE_PATTERNS), 1..3),
        )
            .prop_map(|(deny, actions, resources)| {
                format!(
                    r#"{{"Effect": "{}", "Action": {:?}, "Resource": {:?}}}"#,
                    if deny { "Deny" } else { "Allow" },
                    actions,
                    resources
                )
            })
    }

    fn document() -> impl Strategy<Value = PolicyDocument> {
        prop::collection::vec(statement_json(), 1..5)
            .prop_map(|s| doc(&format!(r#"{{"Statement": [{}]}}"#, s.join(","))))
    }

    proptest! {
        #[test]
        fn evaluation_equals_the_naive_reference(
            docs in prop::collection::vec(document(), 0..4),
            action in prop::sample::select(QUERY_ACTIONS),
            resource in prop::sample::select(RESOURCES),
        ) {
            prop_assert_eq!(evaluate(&docs, action, resource), reference(&docs, action, resource));
        }

        #[test]
        fn a_matching_explicit_deny_always_wins(
            mut docs in prop::collection::vec(document(), 0..4),
            action in prop::sample::select(QUERY_ACTIONS),
            resource in prop::sample::select(RESOURCES),
            at in any::<prop::sample::Index>(),
        ) {
            prop_assume!(action_index(action).is_some());
            // A streamless action is judged against NO_STREAM whatever the resource, so the
            // deny that matches it names NO_STREAM.
            let denied = if concerns_stream(action) { resource } else { NO_STREAM };
            let deny = doc(&format!(
                r#"{{"Statement": [{{"Effect": "Deny", "Action": "{action}", "Resource": "{denied}"}}]}}"#
            ));
            let i = at.index(docs.len() + 1);
            docs.insert(i, deny);
            prop_assert_eq!(evaluate(&docs, action, resource), Decision::ExplicitDeny);
        }

        #[test]
        fn adding_an_allow_never_turns_allow_into_deny(
            mut docs in prop::collection::vec(document(), 0..4),
            extra in prop::collection::vec(statement_json(), 1..3),
            action in prop::sample::select(QUERY_ACTIONS),
            resource in prop::sample::select(RESOURCES),
        ) {
            let before = evaluate(&docs, action, resource);
            let allows = extra.iter().map(|s| s.replace("\"Deny\"", "\"Allow\"")).collect::<Vec<_>>();
            docs.push(doc(&format!(r#"{{"Statement": [{}]}}"#, allows.join(","))));
            let after = evaluate(&docs, action, resource);
            if before == Decision::Allow {
                prop_assert_eq!(after, Decision::Allow);
            }
            if before == Decision::ExplicitDeny {
                prop_assert_eq!(after, Decision::ExplicitDeny);
            }
        }

        #[test]
        fn canonical_json_round_trips(d in document()) {
            prop_assert_eq!(doc(&d.to_json()), d);
        }
    }
}
