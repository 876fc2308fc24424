//! Pseudonymous user ids.
//!
//! Raw Discord ids never leave the bot: tokens, the relay and the database see
//! only a keyed hash of them. The key stays in the bot's data directory, so
//! the mapping cannot be reversed or recomputed without it.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

/// A pseudonymous user id: the first 16 bytes of HMAC-SHA256(key, Discord id),
/// written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId([u8; 16]);

/// Error for a string that is not 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid user id '{value}': expected 32 hex digits")]
pub struct InvalidUserId {
    /// The rejected text, cut to 64 characters.
    pub value: String,
}

impl UserId {
    /// Wraps raw id bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw id bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({self})")
    }
}

impl FromStr for UserId {
    type Err = InvalidUserId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidUserId {
            value: s.chars().take(64).collect(),
        })?;
        Ok(Self(bytes))
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The secret key of the pseudonymous id hash.
#[derive(Clone)]
pub struct UserIdKey([u8; 32]);

impl UserIdKey {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The secret bytes, for storing the key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Computes the pseudonymous id of a Discord user id.
    pub fn pseudonymize(&self, discord_id: u64) -> UserId {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(b"krt-user-id-v1:");
        mac.update(discord_id.to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        UserId(id)
    }
}

impl fmt::Debug for UserIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserIdKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonymize_is_keyed_and_stable() {
        let key_a = UserIdKey::from_bytes([1; 32]);
        let key_b = UserIdKey::from_bytes([2; 32]);
        let id = 123_456_789_012_345_678;
        assert_eq!(key_a.pseudonymize(id), key_a.pseudonymize(id));
        assert_ne!(key_a.pseudonymize(id), key_b.pseudonymize(id));
        assert_ne!(key_a.pseudonymize(id), key_a.pseudonymize(id + 1));
    }

    #[test]
    fn user_id_text_round_trip() {
        let id = UserIdKey::from_bytes([7; 32]).pseudonymize(42);
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(!text.contains("42"));
        assert_eq!(text.parse::<UserId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<UserId>(&json).unwrap(), id);
    }

    #[test]
    fn user_id_rejects_bad_text() {
        assert!("xyz".parse::<UserId>().is_err());
        assert!("00".parse::<UserId>().is_err());
        let err = "not-hex".parse::<UserId>().unwrap_err();
        assert!(err.to_string().contains("not-hex"));
    }

    #[test]
    fn key_debug_hides_secret() {
        let key = UserIdKey::from_bytes([9; 32]);
        assert_eq!(format!("{key:?}"), "UserIdKey(<secret>)");
    }
}
