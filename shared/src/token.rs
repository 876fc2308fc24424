//! Ed25519-signed access tokens.
//!
//! The bot signs tokens with its private key and the relay checks them with
//! the public key, so a compromised relay cannot mint tokens. A token is
//!
//! ```text
//! krt1.<base64url(claims JSON)>.<base64url(Ed25519 signature)>
//! ```
//!
//! where the signature covers the ASCII text before the last dot. Times are
//! Unix seconds and are passed in by the caller.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::freq::{FreqId, FreqSet};
use crate::user::UserId;

/// Prefix of every version 1 token.
pub const TOKEN_PREFIX: &str = "krt1.";

/// Longest token accepted. Real tokens are about 300 bytes, so this bounds
/// the work a forged token can cause.
pub const MAX_TOKEN_LEN: usize = 2048;

/// Highest rank a member can hold.
pub const MAX_RANK: u8 = 100;

/// Accepted clock difference between the bot and the relay, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// What a token grants, as signed by the bot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Pseudonymous user id.
    pub sub: UserId,
    /// Discord guild id the token was issued in.
    pub guild: String,
    /// Display name shown to other listeners.
    pub name: String,
    /// Rank; a higher rank takes the floor from a lower one.
    pub rank: u8,
    /// Frequencies the user may join and transmit on.
    pub freqs: FreqSet,
    /// Issue time, Unix seconds.
    pub iat: u64,
    /// Expiry time, Unix seconds.
    pub exp: u64,
    /// Token id, used for revocation.
    pub jti: String,
}

/// Reasons a token is rejected. The `Display` text is sent to clients.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("missing token: request a new one with /radio connect")]
    Missing,
    /// The token does not have the `krt1.` layout, or its parts do not decode.
    #[error("malformed token ({detail}): copy the whole token from /radio connect")]
    Malformed {
        /// What was wrong.
        detail: &'static str,
    },
    /// The signature does not match the claims under the configured key.
    #[error("invalid token signature: the token was not issued by this server's bot")]
    BadSignature,
    /// The expiry time has passed.
    #[error("token expired at {exp} (Unix seconds): request a new one with /radio connect")]
    Expired {
        /// Expiry time of the token.
        exp: u64,
    },
    /// The issue time lies in the future beyond the allowed clock skew.
    #[error("token issued in the future (at {iat}): check the server clocks")]
    NotYetValid {
        /// Issue time of the token.
        iat: u64,
    },
    /// A moderator revoked the token or banned its user.
    #[error("token revoked: ask a moderator, then request a new one with /radio connect")]
    Revoked,
}

impl TokenError {
    /// Short machine-readable reason, for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed { .. } => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::Revoked => "revoked",
        }
    }
}

impl Claims {
    /// Checks the validity period against `now` (Unix seconds).
    pub fn check_time(&self, now: u64) -> Result<(), TokenError> {
        if now >= self.exp {
            return Err(TokenError::Expired { exp: self.exp });
        }
        // Plain addition overflows for `now` near `u64::MAX`: it panics in
        // debug builds and wraps to a false `NotYetValid` in release builds.
        if self.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid { iat: self.iat });
        }
        Ok(())
    }

    /// Returns true when the token allows `freq`.
    pub fn allows(&self, freq: FreqId) -> bool {
        self.freqs.contains(freq)
    }
}

/// Creates tokens with the bot's private key.
pub struct TokenSigner {
    key: SigningKey,
}

impl TokenSigner {
    /// Wraps a 32-byte Ed25519 secret key.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(secret),
        }
    }

    /// Generates a new random key pair.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The 32 secret bytes, for storing the key.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The matching verifier.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier {
            key: self.key.verifying_key(),
        }
    }

    /// Signs `claims` into a token string.
    pub fn sign(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialize to JSON");
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + json.len() * 2 + 90);
        token.push_str(TOKEN_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        token
    }
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<secret>)")
    }
}

/// Checks tokens with the bot's public key.
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    key: VerifyingKey,
}

/// Error for a public key that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid Ed25519 public key: {0}")]
pub struct InvalidPublicKey(pub String);

impl TokenVerifier {
    /// Wraps a 32-byte Ed25519 public key.
    pub fn from_public(public: &[u8; 32]) -> Result<Self, InvalidPublicKey> {
        VerifyingKey::from_bytes(public)
            .map(|key| Self { key })
            .map_err(|e| InvalidPublicKey(e.to_string()))
    }

    /// Parses a public key written as standard base64.
    pub fn from_base64(text: &str) -> Result<Self, InvalidPublicKey> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| InvalidPublicKey(format!("not base64: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| InvalidPublicKey(format!("{} bytes instead of 32", b.len())))?;
        Self::from_public(&bytes)
    }

    /// The public key as standard base64.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.key.as_bytes())
    }

    /// Checks the layout and signature of `token` and decodes its claims.
    /// The validity period is not checked here: see [`Claims::check_time`].
    pub fn verify_signature(&self, token: &str) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed { detail: "too long" });
        }
        let body = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed {
                detail: "missing krt1. prefix",
            })?;
        let (claims_b64, signature_b64) = body.split_once('.').ok_or(TokenError::Malformed {
            detail: "missing signature",
        })?;
        let signature_bytes =
            URL_SAFE_NO_PAD
                .decode(signature_b64)
                .map_err(|_| TokenError::Malformed {
                    detail: "signature is not base64url",
                })?;
        let signature_bytes: [u8; 64] =
            signature_bytes
                .try_into()
                .map_err(|_| TokenError::Malformed {
                    detail: "signature is not 64 bytes",
                })?;
        let signed_len = TOKEN_PREFIX.len() + claims_b64.len();
        self.key
            .verify_strict(
                &token.as_bytes()[..signed_len],
                &Signature::from_bytes(&signature_bytes),
            )
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| TokenError::Malformed {
                detail: "claims are not base64url",
            })?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed {
            detail: "claims are not valid JSON",
        })
    }

    /// Checks signature and validity period at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify_signature(token)?;
        claims.check_time(now)?;
        Ok(claims)
    }
}

/// Encodes a secret or public key as standard base64, for key files.
pub fn encode_key(bytes: &[u8; 32]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a key file's base64 text into 32 bytes.
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes instead of 32", b.len()))
}

/// Creates a random token id of 32 hex digits.
pub fn new_token_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::UserIdKey;

    fn claims(now: u64) -> Claims {
        Claims {
            sub: UserIdKey::from_bytes([3; 32]).pseudonymize(1),
            guild: "42".into(),
            name: "Alpha Lead".into(),
            rank: 2,
            freqs: "1000-1099".parse().unwrap(),
            iat: now,
            exp: now + 3600,
            jti: new_token_id(),
        }
    }

    #[test]
    fn sign_then_verify() {
        let signer = TokenSigner::generate();
        let claims = claims(1_000_000);
        let token = signer.sign(&claims);
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(signer.verifier().verify(&token, 1_000_010), Ok(claims));
    }

    #[test]
    fn verify_rejects_other_key() {
        let token = TokenSigner::generate().sign(&claims(1_000_000));
        let other = TokenSigner::generate().verifier();
        assert_eq!(
            other.verify(&token, 1_000_010),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn verify_rejects_tampered_claims() {
        let signer = TokenSigner::generate();
        let token = signer.sign(&claims(1_000_000));
        let mut forged = claims(1_000_000);
        forged.rank = MAX_RANK;
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let signature = token.rsplit('.').next().unwrap();
        let forged_token = format!("{TOKEN_PREFIX}{forged_body}.{signature}");
        assert_eq!(
            signer.verifier().verify(&forged_token, 1_000_010),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn verify_checks_time() {
        let signer = TokenSigner::generate();
        let token = signer.sign(&claims(1_000_000));
        let verifier = signer.verifier();
        assert_eq!(
            verifier.verify(&token, 1_003_600),
            Err(TokenError::Expired { exp: 1_003_600 })
        );
        assert_eq!(
            verifier.verify(&token, 1_000_000 - CLOCK_SKEW_SECS - 1),
            Err(TokenError::NotYetValid { iat: 1_000_000 })
        );
    }

    #[test]
    fn verify_rejects_malformed() {
        let verifier = TokenSigner::generate().verifier();
        let cases = [
            ("", TokenError::Missing),
            (
                "hello",
                TokenError::Malformed {
                    detail: "missing krt1. prefix",
                },
            ),
            (
                "krt1.abc",
                TokenError::Malformed {
                    detail: "missing signature",
                },
            ),
            (
                "krt1.abc.!!!",
                TokenError::Malformed {
                    detail: "signature is not base64url",
                },
            ),
            (
                "krt1.abc.AAAA",
                TokenError::Malformed {
                    detail: "signature is not 64 bytes",
                },
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(verifier.verify(token, 0), Err(expected), "token {token:?}");
        }
        let long = format!("krt1.{}", "a".repeat(MAX_TOKEN_LEN));
        assert_eq!(
            verifier.verify(&long, 0),
            Err(TokenError::Malformed { detail: "too long" })
        );
    }

    #[test]
    fn public_key_base64_round_trip() {
        let signer = TokenSigner::generate();
        let text = signer.verifier().to_base64();
        let verifier = TokenVerifier::from_base64(&text).unwrap();
        let token = signer.sign(&claims(5));
        assert!(verifier.verify(&token, 6).is_ok());
        assert!(TokenVerifier::from_base64("AAAA").is_err());
    }

    #[test]
    fn error_text_tells_what_to_do() {
        assert!(
            TokenError::Expired { exp: 5 }
                .to_string()
                .contains("/radio connect")
        );
        assert_eq!(TokenError::Revoked.code(), "revoked");
    }
}
