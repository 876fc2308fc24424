//! Token checks with a cache of verified tokens, and revocations.
//!
//! A signature check costs tens of microseconds, so each token is verified
//! once and its claims are kept in a moka cache keyed by the SHA-256 of the
//! token text. Expiry and revocation are checked on every login, cache hit
//! or not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use krt_shared::UserId;
use krt_shared::token::{Claims, MAX_TOKEN_LEN, TokenError, TokenVerifier};
use moka::sync::Cache;
use sha2::{Digest, Sha256};

/// Checks tokens against the bot's public key and the revocation lists.
pub struct Authenticator {
    verifier: TokenVerifier,
    cache: Cache<[u8; 32], Arc<Claims>>,
    revoked_tokens: DashSet<String>,
    revoked_users: DashMap<UserId, u64>,
    signature_checks: AtomicU64,
    cache_hits: AtomicU64,
}

impl Authenticator {
    /// Creates an authenticator that caches up to `capacity` tokens.
    pub fn new(verifier: TokenVerifier, capacity: u64) -> Self {
        Self {
            verifier,
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
            revoked_tokens: DashSet::new(),
            revoked_users: DashMap::new(),
            signature_checks: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        }
    }

    /// Checks `token` at time `now` (Unix seconds) and returns its claims.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<Arc<Claims>, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed { detail: "too long" });
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let claims = match self.cache.get(&key) {
            Some(claims) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                claims
            }
            None => {
                self.signature_checks.fetch_add(1, Ordering::Relaxed);
                let claims = Arc::new(self.verifier.verify_signature(token)?);
                self.cache.insert(key, Arc::clone(&claims));
                claims
            }
        };
        claims.check_time(now)?;
        if self.is_revoked(&claims) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Returns true when the token id or its user was revoked.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        if self.revoked_tokens.contains(&claims.jti) {
            return true;
        }
        self.revoked_users
            .get(&claims.sub)
            .is_some_and(|before| claims.iat <= *before)
    }

    /// Revokes one token id.
    pub fn revoke_token(&self, token_id: String) {
        self.revoked_tokens.insert(token_id);
    }

    /// Revokes every token of `user` issued at or before `before`.
    pub fn revoke_user(&self, user: UserId, before: u64) {
        self.revoked_users
            .entry(user)
            .and_modify(|current| *current = (*current).max(before))
            .or_insert(before);
    }

    /// Replaces both revocation lists, after the bot resends its state.
    pub fn replace_revocations(&self, tokens: Vec<String>, users: Vec<(UserId, u64)>) {
        self.revoked_tokens.clear();
        for token in tokens {
            self.revoked_tokens.insert(token);
        }
        self.revoked_users.clear();
        for (user, before) in users {
            self.revoke_user(user, before);
        }
    }

    /// Signature checks done since start.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Logins served from the cache since start.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krt_shared::UserIdKey;
    use krt_shared::token::TokenSigner;

    fn claims(user: u64, iat: u64) -> Claims {
        Claims {
            sub: UserIdKey::from_bytes([1; 32]).pseudonymize(user),
            guild: "1".into(),
            name: format!("user {user}"),
            rank: 0,
            freqs: krt_shared::FreqSet::all(),
            iat,
            exp: iat + 600,
            jti: format!("token-{user}-{iat}"),
        }
    }

    #[test]
    fn second_login_is_cache_hit() {
        let signer = TokenSigner::generate();
        let auth = Authenticator::new(signer.verifier(), 100);
        let token = signer.sign(&claims(1, 1000));
        auth.authenticate(&token, 1001).unwrap();
        auth.authenticate(&token, 1002).unwrap();
        assert_eq!(auth.signature_checks(), 1);
        assert_eq!(auth.cache_hits(), 1);
    }

    #[test]
    fn expiry_checked_on_cache_hit() {
        let signer = TokenSigner::generate();
        let auth = Authenticator::new(signer.verifier(), 100);
        let token = signer.sign(&claims(1, 1000));
        auth.authenticate(&token, 1001).unwrap();
        assert_eq!(
            auth.authenticate(&token, 1600),
            Err(TokenError::Expired { exp: 1600 })
        );
    }

    #[test]
    fn revocations_apply_to_cached_tokens() {
        let signer = TokenSigner::generate();
        let auth = Authenticator::new(signer.verifier(), 100);
        let first = claims(1, 1000);
        let token = signer.sign(&first);
        auth.authenticate(&token, 1001).unwrap();

        auth.revoke_token(first.jti.clone());
        assert_eq!(auth.authenticate(&token, 1002), Err(TokenError::Revoked));

        auth.replace_revocations(Vec::new(), vec![(first.sub, 1000)]);
        assert_eq!(auth.authenticate(&token, 1002), Err(TokenError::Revoked));
        let newer = signer.sign(&claims(1, 1001));
        assert!(auth.authenticate(&newer, 1002).is_ok());
    }

    #[test]
    fn forged_token_rejected_and_not_cached() {
        let signer = TokenSigner::generate();
        let auth = Authenticator::new(TokenSigner::generate().verifier(), 100);
        let token = signer.sign(&claims(1, 1000));
        assert_eq!(
            auth.authenticate(&token, 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            auth.authenticate(&token, 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(auth.signature_checks(), 2);
    }
}
