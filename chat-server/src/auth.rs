//! Passwords (Argon2id) and signed, expiring bearer tokens (HMAC-SHA256).

use argon2::password_hash::{
    self, rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chat_core::{Error, UserId};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Hashes and verifies passwords with Argon2id.
///
/// [`Passwords::hash`] and [`Passwords::verify`] allocate Argon2's memory
/// (`memory_kib`, 19 MiB by default) on every call; the server's hashing
/// pool calls the `_with` variants with one [`HashMemory`] per worker
/// instead, allocated once.
#[derive(Debug, Clone)]
pub struct Passwords {
    params: Params,
}

/// Argon2 working memory, reusable across hashes.
#[derive(Debug, Default)]
pub struct HashMemory {
    blocks: Vec<Block>,
}

impl HashMemory {
    /// Memory for hashes with `params` (and grown on demand for stored
    /// hashes that need more).
    fn for_params(params: &Params) -> Self {
        Self {
            blocks: vec![Block::default(); params.block_count()],
        }
    }

    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let need = params.block_count();
        if self.blocks.len() < need {
            self.blocks.resize(need, Block::default());
        }
        &mut self.blocks[..need]
    }
}

fn argon2_error(e: impl std::fmt::Display) -> Error {
    Error::backend("argon2", e.to_string())
}

impl Passwords {
    /// Argon2id with `memory_kib` of memory and `iterations` passes.
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Self, Error> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| Error::invalid(format!("argon2 parameters: {e}")))?;
        Ok(Self { params })
    }

    /// Working memory sized for this configuration's hashes.
    pub fn memory(&self) -> HashMemory {
        HashMemory::for_params(&self.params)
    }

    /// A PHC-format hash of `password` with a fresh random salt. CPU-heavy:
    /// call from `spawn_blocking`.
    pub fn hash(&self, password: &str) -> Result<String, Error> {
        self.hash_with(password, &mut self.memory())
    }

    /// [`Passwords::hash`] in `memory`.
    pub fn hash_with(&self, password: &str, memory: &mut HashMemory) -> Result<String, Error> {
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(argon2_error)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone());
        let len = self
            .params
            .output_len()
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let output = Output::init_with(len, |out| {
            argon2
                .hash_password_into_with_memory(
                    password.as_bytes(),
                    salt_bytes,
                    out,
                    memory.blocks(&self.params),
                )
                .map_err(password_hash::Error::from)
        })
        .map_err(argon2_error)?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(argon2_error)?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(hash.to_string())
    }

    /// Whether `password` matches the stored `hash` (the parameters stored
    /// in the hash are used, so old hashes keep working after a change).
    pub fn verify(&self, password: &str, hash: &str) -> bool {
        self.verify_with(password, hash, &mut self.memory())
    }

    /// [`Passwords::verify`] in `memory`; compares in constant time.
    pub fn verify_with(&self, password: &str, hash: &str, memory: &mut HashMemory) -> bool {
        let mut check = || -> Option<bool> {
            let parsed = PasswordHash::new(hash).ok()?;
            let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
            let version = parsed.version.map(Version::try_from).transpose().ok()?;
            let params = Params::try_from(&parsed).ok()?;
            let expected = parsed.hash?;
            let mut salt = [0u8; 64];
            let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
            let argon2 = Argon2::new(algorithm, version.unwrap_or_default(), params.clone());
            let actual = Output::init_with(expected.len(), |out| {
                argon2
                    .hash_password_into_with_memory(
                        password.as_bytes(),
                        salt,
                        out,
                        memory.blocks(&params),
                    )
                    .map_err(password_hash::Error::from)
            })
            .ok()?;
            // Output's equality is constant-time.
            Some(actual == expected)
        };
        check().unwrap_or(false)
    }

    /// A hash no password matches in practice (random salt and output)
    /// that costs as much to check as a real one: what a login for an
    /// unknown username is verified against, so that its answer takes as
    /// long as a wrong password's.
    pub fn decoy(&self) -> String {
        let salt = SaltString::generate(&mut OsRng);
        let len = self
            .params
            .output_len()
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let random: [u8; 64] = std::array::from_fn(|_| rand::random());
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).unwrap_or_default(),
            salt: Some(salt.as_salt()),
            hash: Output::new(&random[..len.min(64)]).ok(),
        };
        hash.to_string()
    }
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Short-lived bearer token for HTTP calls and the WebSocket.
    Access,
    /// Long-lived token that only buys new access tokens.
    Refresh,
}

/// What a token asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: UserId,
    /// Expiry, Unix milliseconds.
    pub exp: u64,
    /// The login session: every token of one log-in and its refreshes
    /// carries it, and logging out revokes it.
    pub sid: u64,
    /// The user's token epoch at issue; revoking all tokens moves the
    /// epoch past it.
    pub ep: u64,
    /// Access or refresh.
    pub typ: TokenKind,
}

/// Issues and checks tokens of the form `v2.<claims>.<signature>`, where both
/// parts are unpadded base64url and the signature is HMAC-SHA256 over
/// `v2.<claims>` with the deployment's shared secret. (The signature proves
/// the claims; whether the session or epoch is still good is the
/// directory's to say.)
#[derive(Clone)]
pub struct Tokens {
    key: Hmac<Sha256>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { key: <secret> }")
    }
}

const PREFIX: &str = "v2.";

impl Tokens {
    /// Tokens signed with `secret` (at least 32 bytes).
    pub fn new(secret: &[u8]) -> Result<Self, Error> {
        if secret.len() < 32 {
            return Err(Error::invalid("token secret must be at least 32 bytes"));
        }
        let key = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|e| Error::invalid(format!("token secret: {e}")))?;
        Ok(Self { key })
    }

    /// A token for `claims`.
    pub fn issue(&self, claims: Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{PREFIX}{body}");
        let mut mac = self.key.clone();
        mac.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    /// The claims of a validly signed, unexpired token of `kind`.
    pub fn verify(&self, token: &str, now_ms: u64, kind: TokenKind) -> Option<Claims> {
        let (signed, sig) = token.rsplit_once('.')?;
        let body = signed.strip_prefix(PREFIX)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = self.key.clone();
        mac.update(signed.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&sig).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        (claims.exp > now_ms && claims.typ == kind).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let p = Passwords::new(1024, 1).unwrap();
        let h = p.hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p.verify("correct horse", &h));
        assert!(!p.verify("wrong", &h));
        assert!(!p.verify("correct horse", "not a hash"));
        // The reused-memory path agrees with argon2's own PHC verifier,
        // both ways.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, p.params.clone());
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(argon2.verify_password(b"correct horse", &parsed).is_ok());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = argon2.hash_password(b"other", &salt).unwrap().to_string();
        let mut memory = p.memory();
        assert!(p.verify_with("other", &theirs, &mut memory));
        assert!(!p.verify_with("wrong", &theirs, &mut memory));
        // A stored hash with more memory than configured grows the block.
        let bigger = Passwords::new(2048, 1).unwrap();
        let big = bigger.hash("grown").unwrap();
        assert!(p.verify_with("grown", &big, &mut memory));
    }

    #[test]
    fn the_decoy_matches_nothing_and_costs_a_real_verification() {
        let p = Passwords::new(1024, 1).unwrap();
        let decoy = p.decoy();
        assert!(decoy.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(
            PasswordHash::new(&decoy).is_ok(),
            "it parses, so it is computed"
        );
        assert!(!p.verify("", &decoy));
        assert!(!p.verify("password123", &decoy));
    }

    #[test]
    fn tokens_verify_expire_and_reject_tampering() {
        let t = Tokens::new(&[7u8; 32]).unwrap();
        let claims = Claims {
            sub: UserId::new_random(),
            exp: 10_000,
            sid: u64::MAX,
            ep: 3,
            typ: TokenKind::Access,
        };
        let access = TokenKind::Access;
        let token = t.issue(claims);
        assert!(token.starts_with("v2."));
        assert_eq!(t.verify(&token, 9_999, access), Some(claims));
        assert_eq!(t.verify(&token, 10_000, access), None, "expired");
        assert_eq!(
            t.verify(&token, 0, TokenKind::Refresh),
            None,
            "an access token is no refresh token"
        );
        let refresh = t.issue(Claims {
            typ: TokenKind::Refresh,
            ..claims
        });
        assert_eq!(t.verify(&refresh, 0, access), None, "nor the other way");
        let other = Tokens::new(&[8u8; 32]).unwrap();
        assert_eq!(other.verify(&token, 0, access), None, "wrong key");
        let mut forged = token.clone();
        forged.insert(5, 'A');
        assert_eq!(t.verify(&forged, 0, access), None);
        assert_eq!(t.verify("garbage", 0, access), None);
        let v1 = token.replacen("v2.", "v1.", 1);
        assert_eq!(t.verify(&v1, 0, access), None, "another format version");
        assert!(Tokens::new(b"short").is_err());
    }
}
