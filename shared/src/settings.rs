//! Checks that the settings files of the bot and the relay share.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Keys of a settings file that are not settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKeys {
    /// The unknown keys, in the order given.
    pub keys: Vec<String>,
    /// Every setting.
    pub known: &'static [&'static str],
    /// For unknown keys that are options set elsewhere, where to set them.
    pub hints: Vec<&'static str>,
}

/// The hint for a `config` key in a settings file, for `check_keys`.
pub const CONFIG_ELSEWHERE: (&str, &str) = (
    "config",
    "config names the file itself: pass --config or set KRT_CONFIG",
);

/// Unknown keys named in an error message before the rest are only
/// counted, so that a file of thousands of stray keys gives a short error.
const NAMED_KEYS: usize = 10;

impl fmt::Display for UnknownKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named: Vec<String> = self
            .keys
            .iter()
            .take(NAMED_KEYS)
            .map(|key| format!("{key:?}"))
            .collect();
        write!(f, "unknown setting {}", named.join(", "))?;
        if self.keys.len() > NAMED_KEYS {
            write!(f, " and {} more", self.keys.len() - NAMED_KEYS)?;
        }
        write!(
            f,
            ": check the spelling; the settings are {}",
            self.known.join(", ")
        )?;
        for hint in &self.hints {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownKeys {}

/// Checks that every key of `keys` is a field of the settings struct `T`,
/// so that a misspelt key in a settings file is reported instead of
/// silently ignored. `elsewhere` pairs options that a file may not set
/// with a hint on where to set them.
pub fn check_keys<'de, T: Deserialize<'de>>(
    keys: impl IntoIterator<Item = String>,
    elsewhere: &[(&str, &'static str)],
) -> Result<(), UnknownKeys> {
    let known = field_names::<T>();
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|key| !known.contains(&key.as_str()))
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let hints = elsewhere
        .iter()
        .filter(|(option, _)| keys.iter().any(|key| key == option))
        .map(|(_, hint)| *hint)
        .collect();
    Err(UnknownKeys { keys, known, hints })
}

/// Returns the field names of a struct whose `Deserialize` comes from
/// serde's derive, which hands them to `deserialize_struct`. Any other type
/// gives an empty list.
pub fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

/// A deserializer that records the field list it is asked for and then
/// stops.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

/// The error that ends a [`FieldProbe`].
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Example {
        listen: String,
        #[serde(rename = "queue_depth")]
        depth: usize,
    }

    #[test]
    fn field_names_follow_serde_names() {
        assert_eq!(field_names::<Example>(), ["listen", "queue_depth"]);
        assert!(field_names::<u32>().is_empty());
    }

    #[test]
    fn unknown_keys_keep_their_order() {
        let keys = ["queue_dpeth", "listen", "lsiten"].map(String::from);
        let err = check_keys::<Example>(keys, &[]).unwrap_err();
        assert_eq!(err.keys, ["queue_dpeth", "lsiten"]);
        assert_eq!(
            err.to_string(),
            "unknown setting \"queue_dpeth\", \"lsiten\": check the spelling; \
             the settings are listen, queue_depth"
        );
        assert!(check_keys::<Example>(["listen".to_owned()], &[]).is_ok());
    }

    #[test]
    fn options_set_elsewhere_get_a_hint() {
        let elsewhere = [("config", "name the file with --config")];
        let keys = ["config".to_owned()];
        let message = check_keys::<Example>(keys, &elsewhere)
            .unwrap_err()
            .to_string();
        assert!(
            message.ends_with("; name the file with --config"),
            "{message}"
        );
        let keys = ["other".to_owned()];
        let message = check_keys::<Example>(keys, &elsewhere)
            .unwrap_err()
            .to_string();
        assert!(!message.contains("--config"), "{message}");
    }

    #[test]
    fn many_unknown_keys_are_counted() {
        let keys = (0..25).map(|k| format!("stray{k}"));
        let message = check_keys::<Example>(keys, &[]).unwrap_err().to_string();
        assert!(message.contains("\"stray9\" and 15 more:"), "{message}");
        assert!(!message.contains("stray10"), "{message}");
    }
}
