//! The principals and their policies: what survives a restart, and the questions the
//! server asks of it (which credentials does this access key id have; may this principal
//! do this action to this stream).
//!
//! # The file
//!
//! `<data>/auth.bin`, in the catalog's and `fanout.bin`'s format, written atomically by the
//! caller (see [`AuthStore::encoded`]):
//!
//! ```text
//! offset size field
//!  0     8    magic      b"SPAUTH01"
//!  8     4    crc32c     CRC32C of the payload, little-endian
//! 12     4    length     payload bytes, little-endian
//! 16     ..   payload    rkyv archive of `AuthData` (validated with bytecheck on load)
//! ```
//!
//! The payload holds every [`Principal`] (with its SCRAM [`StoredCredentials`], never its
//! secret, and its policies as the JSON text they were put with) and the store's fake-salt
//! key. A file that fails its checksum or does not validate (bad names, duplicate ids, a
//! policy that no longer parses) is an error at start, never a silently smaller store: an
//! auth store that lost a `Deny` would grant more than it should.
//!
//! # Secrets
//!
//! [`AuthStore::create_principal`] draws a 40-character base64url secret (240 bits) and an
//! access key id (`SPAK` and 16 base32 characters, 80 bits), and keeps only
//! [`spate_protocol::scram::derive`]'s output. The secret is answered once; a lost secret
//! means a new principal.
//!
//! # Unknown access key ids
//!
//! A challenge names the salt of the access key id it answers. For an id that does not
//! exist, [`AuthStore::credentials_for`] answers credentials derived with HMAC from a random
//! key kept in the file: the same id always gets the same salt, across restarts too, so a
//! probe cannot tell unknown ids from known ones by the challenge, and verifying against
//! them costs what verifying a real proof costs (and always fails).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use spate_protocol::scram::{self, StoredCredentials, DEFAULT_ITERATIONS, SALT_BYTES};

use super::policy::{evaluate, Decision, PolicyDocument};
use super::AuthError;
use crate::error::EngineError;

const AUTH_MAGIC: [u8; 8] = *b"SPAUTH01";
/// The file's name in the data directory.
pub const AUTH_FILE: &str = "auth.bin";
/// The most principals a store holds.
pub const MAX_PRINCIPALS: usize = 1024;
/// The most policies attached to one principal.
pub const MAX_POLICIES_PER_PRINCIPAL: usize = 10;
/// The longest principal or policy name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Characters of a secret made by [`AuthStore::create_principal`].
pub const SECRET_CHARS: usize = 40;
/// What every access key id starts with.
pub const ACCESS_KEY_PREFIX: &str = "SPAK";
/// Base32 characters after [`ACCESS_KEY_PREFIX`].
pub const ACCESS_KEY_RANDOM_CHARS: usize = 16;
/// The principal [`AuthStore::ensure_root`] creates in an empty store.
pub const ROOT_PRINCIPAL: &str = "root";
/// The name of the policy the root principal gets.
pub const ROOT_POLICY_NAME: &str = "admin";
/// The root principal's policy: everything.
pub const ROOT_POLICY: &str =
    r#"{"Statement":[{"Effect":"Allow","Action":"spate:*","Resource":"*"}]}"#;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// Tries at drawing an access key id no principal has before giving up (a collision of 80
/// random bits is already improbable; only a broken random source gets past a few).
const ACCESS_KEY_DRAWS_MAX: usize = 16;

/// A principal as stored: who it is, how its secret is checked, and its policies.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Principal {
    /// 1-128 characters of `A-Z a-z 0-9 _ . @ -`; unique.
    pub name: String,
    /// `SPAK` and 16 base32 characters, random; unique.
    pub access_key_id: String,
    /// What checks the secret (never the secret).
    pub credentials: StoredCredentials,
    /// A disabled principal authenticates, if the server lets it, but is allowed nothing.
    pub enabled: bool,
    /// When it was created, ms since the epoch.
    pub created_ms: i64,
    /// (policy name, document JSON as put), sorted by policy name.
    pub policies: Vec<(String, String)>,
}

/// A principal as listed: no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalView {
    /// The principal's name.
    pub name: String,
    /// Its access key id.
    pub access_key_id: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// When it was created, ms since the epoch.
    pub created_ms: i64,
    /// The names of its policies, sorted.
    pub policy_names: Vec<String>,
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct AuthData {
    /// Keys the fake credentials of unknown access key ids.
    fake_salt_key: [u8; 32],
    /// Sorted by name.
    principals: Vec<Principal>,
}

/// A principal and its policies parsed (the cache evaluation uses).
#[derive(Debug, Clone)]
struct Entry {
    principal: Principal,
    /// Parallel to `principal.policies`.
    parsed: Vec<PolicyDocument>,
}

/// The principals and their policies; see the module docs.
pub struct AuthStore {
    path: PathBuf,
    fake_salt_key: [u8; 32],
    /// By name.
    principals: BTreeMap<String, Entry>,
    /// Access key id -> name.
    by_key: HashMap<String, String>,
    /// Raised by every change to what the file holds: the caller persists
    /// [`AuthStore::encoded`] when it moves, and drops decisions cached under an older value.
    pub changes: u64,
}

impl std::fmt::Debug for AuthStore {
    // Not derived: the fake-salt key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStore")
            .field("path", &self.path)
            .field("principals", &self.principals.len())
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

impl AuthStore {
    /// The store of `data_dir` from its file's bytes (`None`: no file yet, an empty store
    /// with a fresh fake-salt key). A damaged file is an [`EngineError::Startup`] naming it.
    pub fn from_bytes(data_dir: &Path, bytes: Option<&[u8]>) -> Result<AuthStore, EngineError> {
        let path = data_dir.join(AUTH_FILE);
        let data = match bytes {
            None => AuthData {
                fake_salt_key: rand::random(),
                principals: Vec::new(),
            },
            Some(b) => decode(b).map_err(|why| {
                EngineError::Startup(format!("{} is damaged: {why}", path.display()))
            })?,
        };
        let mut store = AuthStore {
            path,
            fake_salt_key: data.fake_salt_key,
            principals: BTreeMap::new(),
            by_key: HashMap::new(),
            changes: 0,
        };
        for principal in data.principals {
            store.load(principal).map_err(|why| {
                EngineError::Startup(format!("{} is damaged: {why}", store.path.display()))
            })?;
        }
        Ok(store)
    }

    /// Checks one principal read from the file and adds it with its parsed policies.
    fn load(&mut self, principal: Principal) -> Result<(), String> {
        let name = &principal.name;
        if !is_valid_name(name) {
            return Err(format!("principal name {name:?} is not valid"));
        }
        if self.principals.contains_key(name) {
            return Err(format!("principal {name:?} appears twice"));
        }
        if !is_valid_access_key_id(&principal.access_key_id)
            || self.by_key.contains_key(&principal.access_key_id)
        {
            return Err(format!(
                "principal {name:?} has a bad or duplicate access key id"
            ));
        }
        if !scram::is_valid_iterations(principal.credentials.iterations) {
            return Err(format!("principal {name:?} has a bad iteration count"));
        }
        if principal.policies.len() > MAX_POLICIES_PER_PRINCIPAL
            || !principal.policies.is_sorted_by(|a, b| a.0 < b.0)
        {
            return Err(format!(
                "principal {name:?} has too many or unsorted policies"
            ));
        }
        let mut parsed = Vec::with_capacity(principal.policies.len());
        for (policy, json) in &principal.policies {
            if !is_valid_name(policy) {
                return Err(format!("principal {name:?} has a policy named {policy:?}"));
            }
            parsed.push(PolicyDocument::parse(json).map_err(|why| {
                format!("policy {policy:?} of principal {name:?} does not parse: {why}")
            })?);
        }
        self.insert(Entry { principal, parsed });
        Ok(())
    }

    fn insert(&mut self, entry: Entry) {
        let name = entry.principal.name.clone();
        let previous_key = self
            .by_key
            .insert(entry.principal.access_key_id.clone(), name.clone());
        assert!(previous_key.is_none(), "access key ids are unique");
        let previous = self.principals.insert(name, entry);
        assert!(previous.is_none(), "principal names are unique");
        self.assert_indexed();
    }

    /// The two maps agree (checked after every change; cheap next to the change itself).
    fn assert_indexed(&self) {
        assert_eq!(self.principals.len(), self.by_key.len());
        assert!(self.principals.len() <= MAX_PRINCIPALS);
    }

    /// The file's path and encoded bytes, for an atomic write.
    pub fn encoded(&self) -> (PathBuf, Vec<u8>) {
        let data = AuthData {
            fake_salt_key: self.fake_salt_key,
            principals: self
                .principals
                .values()
                .map(|e| e.principal.clone())
                .collect(),
        };
        (self.path.clone(), encode(&data))
    }

    /// Whether the store has no principal.
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
    }

    /// How many principals the store has.
    pub fn len(&self) -> usize {
        self.principals.len()
    }

    // ---- principals -------------------------------------------------------------------

    /// Creates an enabled principal with no policy; answers it and its secret, which is
    /// not kept anywhere and cannot be shown again.
    pub fn create_principal(
        &mut self,
        name: &str,
        now_ms: i64,
        rng: &mut impl rand::RngCore,
    ) -> Result<(Principal, String), AuthError> {
        check_name("principal", name)?;
        if self.principals.contains_key(name) {
            return Err(AuthError::PrincipalExists(name.to_owned()));
        }
        if self.principals.len() >= MAX_PRINCIPALS {
            return Err(AuthError::LimitExceeded(format!(
                "the store has {MAX_PRINCIPALS} principals, the most allowed"
            )));
        }
        let access_key_id = (0..ACCESS_KEY_DRAWS_MAX)
            .map(|_| draw_access_key_id(rng))
            .find(|id| !self.by_key.contains_key(id))
            .ok_or_else(|| {
                AuthError::LimitExceeded(
                    "could not draw an unused access key id: is the random source broken?".into(),
                )
            })?;
        let secret: String = random_chars(rng, BASE64URL, SECRET_CHARS);
        let mut salt = [0u8; SALT_BYTES];
        rng.fill_bytes(&mut salt);
        let principal = Principal {
            name: name.to_owned(),
            access_key_id,
            credentials: scram::derive(secret.as_bytes(), salt, DEFAULT_ITERATIONS),
            enabled: true,
            created_ms: now_ms,
            policies: Vec::new(),
        };
        self.insert(Entry {
            principal: principal.clone(),
            parsed: Vec::new(),
        });
        self.changes += 1;
        Ok((principal, secret))
    }

    /// When the store has no principal, creates [`ROOT_PRINCIPAL`] with the policy
    /// [`ROOT_POLICY_NAME`] = [`ROOT_POLICY`] (everything) and answers it with its secret,
    /// for the server to hand to its operator (a file only they can read) at the first
    /// start with authentication on. `None` when the store has principals.
    pub fn ensure_root(
        &mut self,
        now_ms: i64,
        rng: &mut impl rand::RngCore,
    ) -> Option<(Principal, String)> {
        if !self.is_empty() {
            return None;
        }
        let (_, secret) = self
            .create_principal(ROOT_PRINCIPAL, now_ms, rng)
            .expect("an empty store takes the root principal");
        self.put_policy(ROOT_PRINCIPAL, ROOT_POLICY_NAME, ROOT_POLICY)
            .expect("the root policy is valid");
        let root = self.by_name(ROOT_PRINCIPAL).expect("just created").clone();
        Some((root, secret))
    }

    /// Every principal, sorted by name, without credentials.
    pub fn list(&self) -> Vec<PrincipalView> {
        self.principals
            .values()
            .map(|e| {
                let p = &e.principal;
                PrincipalView {
                    name: p.name.clone(),
                    access_key_id: p.access_key_id.clone(),
                    enabled: p.enabled,
                    created_ms: p.created_ms,
                    policy_names: p.policies.iter().map(|(n, _)| n.clone()).collect(),
                }
            })
            .collect()
    }

    /// Enables or disables a principal. A disabled one is allowed nothing
    /// ([`Decision::PrincipalDisabled`]) until enabled again.
    pub fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<(), AuthError> {
        let entry = self.entry_mut(name)?;
        if entry.principal.enabled != enabled {
            entry.principal.enabled = enabled;
            self.changes += 1;
        }
        Ok(())
    }

    /// Deletes a principal and its policies; answers what it was. Deleting the last one
    /// leaves an empty store, and [`AuthStore::ensure_root`] makes a new root at the next
    /// start.
    pub fn delete_principal(&mut self, name: &str) -> Result<Principal, AuthError> {
        let entry = self
            .principals
            .remove(name)
            .ok_or_else(|| AuthError::UnknownPrincipal(name.to_owned()))?;
        let removed = self.by_key.remove(&entry.principal.access_key_id);
        assert_eq!(removed.as_deref(), Some(name));
        self.assert_indexed();
        self.changes += 1;
        Ok(entry.principal)
    }

    /// The principal with this access key id.
    pub fn by_access_key(&self, access_key_id: &str) -> Option<&Principal> {
        let name = self.by_key.get(access_key_id)?;
        Some(&self.principals[name].principal)
    }

    /// The principal with this name.
    pub fn by_name(&self, name: &str) -> Option<&Principal> {
        self.principals.get(name).map(|e| &e.principal)
    }

    /// The credentials a connection presenting `access_key_id` is challenged and verified
    /// with, and its principal when the id is known. For an unknown id, the stable fake
    /// credentials of the module docs: challenge with them and verify against them as for
    /// a known id, so that neither the challenge nor the time taken tells the difference.
    /// A disabled principal gets its real credentials; refusing it is the caller's choice.
    pub fn credentials_for(&self, access_key_id: &str) -> (StoredCredentials, Option<&Principal>) {
        match self.by_access_key(access_key_id) {
            Some(p) => (p.credentials, Some(p)),
            None => (self.fake_credentials(access_key_id), None),
        }
    }

    /// The salt a challenge names for an unknown access key id: derived from the store's
    /// secret key and the id, the same for the same id across restarts.
    pub fn fake_salt(&self, access_key_id: &str) -> [u8; SALT_BYTES] {
        self.fake_credentials(access_key_id).salt
    }

    fn fake_credentials(&self, access_key_id: &str) -> StoredCredentials {
        let mac = |label: &[u8]| -> [u8; 32] {
            let mut mac = Hmac::<Sha256>::new_from_slice(&self.fake_salt_key)
                .expect("HMAC takes any key length");
            mac.update(label);
            mac.update(access_key_id.as_bytes());
            mac.finalize().into_bytes().into()
        };
        let salt = mac(b"spate-fake-salt-v1\0");
        StoredCredentials {
            salt: salt[..SALT_BYTES].try_into().expect("16 of 32 bytes"),
            iterations: DEFAULT_ITERATIONS,
            stored_key: mac(b"spate-fake-stored-key-v1\0"),
            server_key: mac(b"spate-fake-server-key-v1\0"),
        }
    }

    // ---- policies ---------------------------------------------------------------------

    /// Attaches `json` to `principal` as `policy_name`, replacing a policy of that name.
    /// The document is parsed first: an invalid one changes nothing.
    pub fn put_policy(
        &mut self,
        principal: &str,
        policy_name: &str,
        json: &str,
    ) -> Result<(), AuthError> {
        check_name("policy", policy_name)?;
        let parsed = PolicyDocument::parse(json).map_err(AuthError::InvalidPolicy)?;
        let entry = self.entry_mut(principal)?;
        let policies = &mut entry.principal.policies;
        match policies.binary_search_by(|(n, _)| n.as_str().cmp(policy_name)) {
            Ok(i) => {
                policies[i].1 = json.to_owned();
                entry.parsed[i] = parsed;
            }
            Err(i) => {
                if policies.len() >= MAX_POLICIES_PER_PRINCIPAL {
                    return Err(AuthError::LimitExceeded(format!(
                        "principal {principal:?} has {MAX_POLICIES_PER_PRINCIPAL} policies, the most allowed"
                    )));
                }
                policies.insert(i, (policy_name.to_owned(), json.to_owned()));
                entry.parsed.insert(i, parsed);
            }
        }
        assert_eq!(entry.principal.policies.len(), entry.parsed.len());
        self.changes += 1;
        Ok(())
    }

    /// The document of a principal's policy, as it was put.
    pub fn get_policy(&self, principal: &str, policy_name: &str) -> Result<String, AuthError> {
        let entry = self.entry(principal)?;
        let i = policy_index(entry, policy_name)?;
        Ok(entry.principal.policies[i].1.clone())
    }

    /// The names of a principal's policies, sorted.
    pub fn policy_names(&self, principal: &str) -> Result<Vec<String>, AuthError> {
        let entry = self.entry(principal)?;
        Ok(entry
            .principal
            .policies
            .iter()
            .map(|(n, _)| n.clone())
            .collect())
    }

    /// Detaches a principal's policy.
    pub fn delete_policy(&mut self, principal: &str, policy_name: &str) -> Result<(), AuthError> {
        let entry = self.entry_mut(principal)?;
        let i = policy_index(entry, policy_name)?;
        entry.principal.policies.remove(i);
        entry.parsed.remove(i);
        assert_eq!(entry.principal.policies.len(), entry.parsed.len());
        self.changes += 1;
        Ok(())
    }

    /// May `principal` do `action` to `resource` (a stream name, or
    /// [`NO_STREAM`](super::NO_STREAM) for an action that concerns none)? An unknown
    /// principal gets [`Decision::ImplicitDeny`], a disabled one
    /// [`Decision::PrincipalDisabled`]; otherwise its policies decide ([`evaluate`]).
    pub fn decide(&self, principal: &str, action: &str, resource: &str) -> Decision {
        match self.principals.get(principal) {
            None => Decision::ImplicitDeny,
            Some(e) if !e.principal.enabled => Decision::PrincipalDisabled,
            Some(e) => evaluate(&e.parsed, action, resource),
        }
    }

    fn entry(&self, name: &str) -> Result<&Entry, AuthError> {
        self.principals
            .get(name)
            .ok_or_else(|| AuthError::UnknownPrincipal(name.to_owned()))
    }

    fn entry_mut(&mut self, name: &str) -> Result<&mut Entry, AuthError> {
        self.principals
            .get_mut(name)
            .ok_or_else(|| AuthError::UnknownPrincipal(name.to_owned()))
    }
}

fn policy_index(entry: &Entry, policy_name: &str) -> Result<usize, AuthError> {
    entry
        .principal
        .policies
        .binary_search_by(|(n, _)| n.as_str().cmp(policy_name))
        .map_err(|_| AuthError::UnknownPolicy {
            principal: entry.principal.name.clone(),
            policy: policy_name.to_owned(),
        })
}

/// Whether `name` is a valid principal or policy name: 1-128 characters of
/// `A-Z a-z 0-9 _ . @ -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Whether `id` has the shape of an access key id: `SPAK` and 16 base32 characters
/// (`A-Z 2-7`).
pub fn is_valid_access_key_id(id: &str) -> bool {
    id.len() == ACCESS_KEY_PREFIX.len() + ACCESS_KEY_RANDOM_CHARS
        && id.starts_with(ACCESS_KEY_PREFIX)
        && id.as_bytes()[ACCESS_KEY_PREFIX.len()..]
            .iter()
            .all(|b| BASE32.contains(b))
}

fn check_name(kind: &str, name: &str) -> Result<(), AuthError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(AuthError::InvalidName(format!(
            "{kind} name {name:?} must be 1-{MAX_NAME_BYTES} characters of A-Z a-z 0-9 _ . @ -"
        )))
    }
}

fn draw_access_key_id(rng: &mut impl rand::RngCore) -> String {
    let mut id = String::from(ACCESS_KEY_PREFIX);
    id.push_str(&random_chars(rng, BASE32, ACCESS_KEY_RANDOM_CHARS));
    id
}

/// `n` characters drawn uniformly from `alphabet` (32 or 64 characters: both divide 256,
/// so masking a random byte is unbiased).
fn random_chars(rng: &mut impl rand::RngCore, alphabet: &[u8], n: usize) -> String {
    assert!(alphabet.len() == 32 || alphabet.len() == 64);
    let mut bytes = vec![0u8; n];
    rng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect()
}

fn encode(data: &AuthData) -> Vec<u8> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(data).expect("auth state serializes");
    crate::catalog::seal_state_file(&AUTH_MAGIC, &payload)
}

fn decode(bytes: &[u8]) -> Result<AuthData, String> {
    let aligned = crate::catalog::open_state_file(&AUTH_MAGIC, bytes)?;
    if bytes.len() != 16 + aligned.len() {
        return Err("longer than its length says".into());
    }
    rkyv::from_bytes::<AuthData, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::NO_STREAM;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use spate_protocol::scram::{auth_message, client_proof, verify, NONCE_BYTES};

    fn store() -> AuthStore {
        AuthStore::from_bytes(Path::new("/x"), None).unwrap()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// A full challenge–response with `secret` against what the store holds for `id`.
    fn authenticates(store: &AuthStore, id: &str, secret: &str) -> bool {
        let (creds, _) = store.credentials_for(id);
        let am = auth_message(
            id,
            &[1; NONCE_BYTES],
            &[2; NONCE_BYTES],
            &creds.salt,
            creds.iterations,
        );
        let proof = client_proof(secret.as_bytes(), creds.salt, creds.iterations, &am);
        verify(&creds, &am, &proof.proof).is_some()
    }

    const READ_CLICKS: &str = r#"{"Statement": [
        {"Effect": "Allow", "Action": ["spate:GetRecords", "spate:GetShardIterator"], "Resource": "clicks-*"}]}"#;
    const DENY_PROD: &str = r#"{"Statement": [
        {"Effect": "Deny", "Action": "spate:*", "Resource": "clicks-prod"}]}"#;

    #[test]
    fn a_created_principal_authenticates_with_its_secret_only() {
        let mut s = store();
        let (p, secret) = s
            .create_principal("alice@example.com", 5, &mut rng())
            .unwrap();
        assert_eq!(s.changes, 1);
        assert_eq!(secret.len(), SECRET_CHARS);
        assert!(secret.bytes().all(|b| BASE64URL.contains(&b)), "{secret}");
        assert!(
            is_valid_access_key_id(&p.access_key_id),
            "{}",
            p.access_key_id
        );
        assert!((p.enabled, p.created_ms, p.policies.is_empty()) == (true, 5, true));
        assert_eq!(s.by_access_key(&p.access_key_id), Some(&p));
        assert_eq!(s.by_name("alice@example.com"), Some(&p));
        assert!(authenticates(&s, &p.access_key_id, &secret));
        assert!(!authenticates(&s, &p.access_key_id, "not the secret"));
        // The secret itself is nowhere in what is stored.
        let (_, bytes) = s.encoded();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }

    #[test]
    fn names_are_checked_and_unique() {
        let mut s = store();
        s.create_principal("a", 0, &mut rng()).unwrap();
        assert_eq!(
            s.create_principal("a", 0, &mut rng()).unwrap_err(),
            AuthError::PrincipalExists("a".into())
        );
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for bad in ["", "with space", "slash/", "ü", long.as_str()] {
            assert!(
                matches!(
                    s.create_principal(bad, 0, &mut rng()),
                    Err(AuthError::InvalidName(_))
                ),
                "{bad:?}"
            );
            assert!(matches!(
                s.put_policy("a", bad, READ_CLICKS),
                Err(AuthError::InvalidName(_))
            ));
        }
        s.create_principal(&"x".repeat(MAX_NAME_BYTES), 0, &mut rng())
            .unwrap();
        s.create_principal("svc_1.b-c@d", 0, &mut rng()).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.changes, 3, "only successful creations count");
    }

    #[test]
    fn access_key_ids_differ_and_a_broken_random_source_is_an_error() {
        let mut s = store();
        let mut r = rng();
        let a = s.create_principal("a", 0, &mut r).unwrap().0;
        let b = s.create_principal("b", 0, &mut r).unwrap().0;
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_ne!(a.credentials.salt, b.credentials.salt);
        let mut stuck = rand::rngs::mock::StepRng::new(0, 0);
        s.create_principal("c", 0, &mut stuck).unwrap();
        assert!(matches!(
            s.create_principal("d", 0, &mut stuck),
            Err(AuthError::LimitExceeded(_))
        ));
    }

    #[test]
    fn listing_shows_no_credentials_and_is_sorted() {
        let mut s = store();
        s.create_principal("b", 2, &mut rng()).unwrap();
        let (a, _) = s.create_principal("a", 1, &mut rng()).unwrap();
        s.put_policy("a", "read", READ_CLICKS).unwrap();
        s.set_enabled("b", false).unwrap();
        let list = s.list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0],
            PrincipalView {
                name: "a".into(),
                access_key_id: a.access_key_id,
                enabled: true,
                created_ms: 1,
                policy_names: vec!["read".into()],
            }
        );
        assert_eq!((list[1].name.as_str(), list[1].enabled), ("b", false));
    }

    #[test]
    fn policies_are_put_replaced_listed_read_and_deleted() {
        let mut s = store();
        s.create_principal("a", 0, &mut rng()).unwrap();
        let before = s.changes;
        s.put_policy("a", "z", DENY_PROD).unwrap();
        s.put_policy("a", "read", READ_CLICKS).unwrap();
        assert_eq!(s.policy_names("a").unwrap(), ["read", "z"]);
        assert_eq!(s.get_policy("a", "read").unwrap(), READ_CLICKS);
        s.put_policy("a", "read", ROOT_POLICY).unwrap();
        assert_eq!(s.get_policy("a", "read").unwrap(), ROOT_POLICY);
        assert_eq!(
            s.policy_names("a").unwrap().len(),
            2,
            "put replaces by name"
        );
        s.delete_policy("a", "z").unwrap();
        assert_eq!(s.policy_names("a").unwrap(), ["read"]);
        assert_eq!(s.changes, before + 4);
        assert_eq!(
            s.get_policy("a", "z").unwrap_err(),
            AuthError::UnknownPolicy {
                principal: "a".into(),
                policy: "z".into()
            }
        );
        assert!(matches!(
            s.delete_policy("a", "z"),
            Err(AuthError::UnknownPolicy { .. })
        ));
        for missing in [
            s.get_policy("nobody", "p").unwrap_err(),
            s.policy_names("nobody").unwrap_err(),
            s.put_policy("nobody", "p", READ_CLICKS).unwrap_err(),
            s.delete_policy("nobody", "p").unwrap_err(),
            s.set_enabled("nobody", true).unwrap_err(),
            s.delete_principal("nobody").unwrap_err(),
        ] {
            assert_eq!(missing, AuthError::UnknownPrincipal("nobody".into()));
        }
    }

    #[test]
    fn an_invalid_policy_or_one_too_many_changes_nothing() {
        let mut s = store();
        s.create_principal("a", 0, &mut rng()).unwrap();
        let before = s.changes;
        let e = s.put_policy("a", "p", r#"{"Statement": []}"#).unwrap_err();
        assert!(
            matches!(&e, AuthError::InvalidPolicy(m) if m.contains("empty")),
            "{e}"
        );
        assert_eq!((s.changes, s.policy_names("a").unwrap().len()), (before, 0));
        for i in 0..MAX_POLICIES_PER_PRINCIPAL {
            s.put_policy("a", &format!("p{i}"), READ_CLICKS).unwrap();
        }
        let before = s.changes;
        assert!(matches!(
            s.put_policy("a", "one-more", READ_CLICKS),
            Err(AuthError::LimitExceeded(_))
        ));
        // Replacing one of the ten is still fine.
        s.put_policy("a", "p0", DENY_PROD).unwrap();
        assert_eq!(s.changes, before + 1);
        assert_eq!(
            s.policy_names("a").unwrap().len(),
            MAX_POLICIES_PER_PRINCIPAL
        );
    }

    #[test]
    fn decisions_follow_policies_and_the_enabled_flag() {
        let mut s = store();
        s.create_principal("reader", 0, &mut rng()).unwrap();
        s.put_policy("reader", "read", READ_CLICKS).unwrap();
        s.put_policy("reader", "not-prod", DENY_PROD).unwrap();
        assert_eq!(
            s.decide("reader", "spate:GetRecords", "clicks-a"),
            Decision::Allow
        );
        assert_eq!(
            s.decide("reader", "spate:PutRecords", "clicks-a"),
            Decision::ImplicitDeny
        );
        assert_eq!(
            s.decide("reader", "spate:GetRecords", "views"),
            Decision::ImplicitDeny
        );
        assert_eq!(
            s.decide("reader", "spate:GetRecords", "clicks-prod"),
            Decision::ExplicitDeny
        );
        assert_eq!(
            s.decide("reader", "spate:ListStreams", NO_STREAM),
            Decision::ImplicitDeny
        );
        assert_eq!(
            s.decide("ghost", "spate:GetRecords", "clicks-a"),
            Decision::ImplicitDeny
        );
        s.set_enabled("reader", false).unwrap();
        assert_eq!(
            s.decide("reader", "spate:GetRecords", "clicks-a"),
            Decision::PrincipalDisabled
        );
        let changes = s.changes;
        s.set_enabled("reader", false).unwrap();
        assert_eq!(s.changes, changes, "no change, no save");
        s.set_enabled("reader", true).unwrap();
        assert_eq!(
            s.decide("reader", "spate:GetRecords", "clicks-a"),
            Decision::Allow
        );
        s.delete_policy("reader", "read").unwrap();
        assert_eq!(
            s.decide("reader", "spate:GetRecords", "clicks-a"),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn deleting_a_principal_forgets_its_name_and_key() {
        let mut s = store();
        let (p, secret) = s.create_principal("a", 0, &mut rng()).unwrap();
        s.put_policy("a", "all", ROOT_POLICY).unwrap();
        assert_eq!(s.delete_principal("a").unwrap().name, "a");
        assert!(s.is_empty());
        assert_eq!(s.by_access_key(&p.access_key_id), None);
        assert_eq!(
            s.decide("a", "spate:ListStreams", NO_STREAM),
            Decision::ImplicitDeny
        );
        assert!(!authenticates(&s, &p.access_key_id, &secret));
        // The name can be taken again, with a new key and secret.
        let (again, _) = s
            .create_principal("a", 1, &mut StdRng::seed_from_u64(8))
            .unwrap();
        assert_ne!(again.access_key_id, p.access_key_id);
    }

    #[test]
    fn root_is_created_once_in_an_empty_store_and_may_do_everything() {
        let mut s = store();
        let (root, secret) = s.ensure_root(9, &mut rng()).expect("empty store");
        assert_eq!(root.name, ROOT_PRINCIPAL);
        assert_eq!(s.policy_names(ROOT_PRINCIPAL).unwrap(), [ROOT_POLICY_NAME]);
        assert!(authenticates(&s, &root.access_key_id, &secret));
        for action in crate::auth::ACTIONS {
            assert_eq!(
                s.decide(ROOT_PRINCIPAL, action, "any-stream"),
                Decision::Allow
            );
            assert_eq!(s.decide(ROOT_PRINCIPAL, action, NO_STREAM), Decision::Allow);
        }
        assert!(s.ensure_root(10, &mut rng()).is_none());
        let mut other = store();
        other.create_principal("someone", 0, &mut rng()).unwrap();
        assert!(other.ensure_root(0, &mut rng()).is_none());
    }

    #[test]
    fn unknown_key_ids_get_stable_fake_credentials_that_never_verify() {
        let mut s = store();
        let (p, secret) = s.create_principal("a", 0, &mut rng()).unwrap();
        let unknown = "SPAKAAAAAAAAAAAAAAAA";
        let (fake, who) = s.credentials_for(unknown);
        assert!(who.is_none());
        assert_eq!(fake.salt, s.fake_salt(unknown));
        assert_eq!(
            fake.iterations, p.credentials.iterations,
            "same count as real ones"
        );
        assert_eq!(
            s.credentials_for(unknown).0,
            fake,
            "the same id, the same answer"
        );
        assert_ne!(s.fake_salt("SPAKBBBBBBBBBBBBBBBB"), fake.salt);
        assert_ne!(store().fake_salt(unknown), fake.salt, "keyed per store");
        assert!(!authenticates(&s, unknown, &secret));
        let (real, who) = s.credentials_for(&p.access_key_id);
        assert_eq!(
            (real, who.map(|p| p.name.as_str())),
            (p.credentials, Some("a"))
        );
        // Stable across a restart: the key is in the file.
        let (_, bytes) = s.encoded();
        let back = AuthStore::from_bytes(Path::new("/x"), Some(&bytes)).unwrap();
        assert_eq!(back.fake_salt(unknown), fake.salt);
    }

    #[test]
    fn the_file_round_trips_with_policies_in_force() {
        let mut s = store();
        let (p, secret) = s.create_principal("reader", 3, &mut rng()).unwrap();
        s.put_policy("reader", "read", READ_CLICKS).unwrap();
        s.put_policy("reader", "not-prod", DENY_PROD).unwrap();
        s.create_principal("off", 4, &mut rng()).unwrap();
        s.set_enabled("off", false).unwrap();
        let (path, bytes) = s.encoded();
        assert_eq!(path, Path::new("/x").join(AUTH_FILE));
        assert_eq!(&bytes[..8], b"SPAUTH01");
        let back = AuthStore::from_bytes(Path::new("/x"), Some(&bytes)).unwrap();
        assert_eq!(back.changes, 0);
        assert_eq!(back.list(), s.list());
        assert_eq!(back.by_name("reader"), s.by_name("reader"));
        assert!(authenticates(&back, &p.access_key_id, &secret));
        assert_eq!(
            back.decide("reader", "spate:GetRecords", "clicks-a"),
            Decision::Allow
        );
        assert_eq!(
            back.decide("reader", "spate:GetRecords", "clicks-prod"),
            Decision::ExplicitDeny
        );
        assert_eq!(
            back.decide("off", "spate:ListStreams", NO_STREAM),
            Decision::PrincipalDisabled
        );
        assert_eq!(back.encoded().1, bytes, "encoding is deterministic");
        // An empty store round-trips too.
        let empty = store();
        let again = AuthStore::from_bytes(Path::new("/x"), Some(&empty.encoded().1)).unwrap();
        assert!(again.is_empty());
    }

    #[test]
    fn a_damaged_file_is_a_clear_error() {
        let mut s = store();
        s.ensure_root(0, &mut rng()).unwrap();
        let (_, bytes) = s.encoded();
        let damaged = |b: &[u8]| match AuthStore::from_bytes(Path::new("/x"), Some(b)) {
            Err(EngineError::Startup(m)) => m,
            other => panic!("{other:?}"),
        };
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let m = damaged(&flipped);
        assert!(
            m.contains("auth.bin") && m.contains("checksum mismatch"),
            "{m}"
        );
        let mut bad_crc = bytes.clone();
        bad_crc[8] ^= 1;
        assert!(damaged(&bad_crc).contains("checksum mismatch"));
        let mut bad_magic = bytes.clone();
        bad_magic[0] = b'X';
        assert!(damaged(&bad_magic).contains("bad magic"));
        for cut in [0, 7, 16, bytes.len() - 1] {
            assert!(damaged(&bytes[..cut]).contains("auth.bin"), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(damaged(&longer).contains("longer"));
    }

    #[test]
    fn a_file_with_valid_checksum_but_bad_content_is_refused() {
        let good = {
            let mut s = store();
            s.create_principal("a", 0, &mut rng()).unwrap();
            s.encoded().1
        };
        let data = decode(&good).unwrap();
        let cases: Vec<(AuthData, &str)> = vec![
            {
                let mut d = data.clone();
                d.principals[0].policies = vec![("p".into(), "{}".into())];
                (d, "does not parse")
            },
            {
                let mut d = data.clone();
                d.principals.push(d.principals[0].clone());
                (d, "appears twice")
            },
            {
                let mut d = data.clone();
                let mut other = d.principals[0].clone();
                other.name = "b".into();
                d.principals.push(other);
                (d, "access key id")
            },
            {
                let mut d = data.clone();
                d.principals[0].name = "bad name".into();
                (d, "not valid")
            },
            {
                let mut d = data.clone();
                d.principals[0].credentials.iterations = 1;
                (d, "iteration")
            },
        ];
        for (d, needle) in cases {
            match AuthStore::from_bytes(Path::new("/x"), Some(&encode(&d))) {
                Err(EngineError::Startup(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_principal_limit_is_enforced() {
        let mut s = store();
        // Filled directly: deriving a thousand credentials would only slow the test.
        let (template, _) = s.create_principal("p0", 0, &mut rng()).unwrap();
        let mut r = StdRng::seed_from_u64(99);
        for i in 1..MAX_PRINCIPALS {
            let mut p = template.clone();
            p.name = format!("p{i}");
            p.access_key_id = draw_access_key_id(&mut r);
            s.insert(Entry {
                principal: p,
                parsed: Vec::new(),
            });
        }
        assert!(matches!(
            s.create_principal("one-more", 0, &mut rng()),
            Err(AuthError::LimitExceeded(_))
        ));
        s.delete_principal("p7").unwrap();
        s.create_principal("one-more", 0, &mut rng()).unwrap();
    }
}
