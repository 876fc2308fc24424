//! `krt-bot mint-tokens`: signed tokens for synthetic users, for load tests.
//!
//! The users do not exist on Discord. Each one gets a synthetic Discord id
//! that is pseudonymized with the data dir's user id key, exactly like a real
//! member, so the relay cannot tell the tokens apart from `/radio connect`
//! tokens signed by the same key.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use krt_shared::FreqSet;
use krt_shared::keyfile::{self, KeyFileError};
use krt_shared::token::{Claims, MAX_RANK, new_token_id};

/// First synthetic Discord id. Synthetic user `n` (from 0) gets this id plus
/// `n` on every run, so it keeps its pseudonymous id across runs with the
/// same key.
///
/// NOTE: these are valid snowflakes of October 2015, so a real account could
/// have one of them. Mint load-test tokens in a data dir of their own.
pub const SYNTHETIC_ID_BASE: u64 = 100_000_000_000_000_000;

/// Largest number of tokens one run mints.
pub const MAX_COUNT: u32 = 1_000_000;

/// Longest accepted token lifetime: one year.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Settings of one `mint-tokens` run.
#[derive(Clone, Debug)]
pub struct MintOptions {
    /// Data directory with the signing key and the user id key.
    pub data_dir: PathBuf,
    /// Number of tokens, one per synthetic user.
    pub count: u32,
    /// Frequencies every token allows.
    pub freqs: FreqSet,
    /// Token lifetime.
    pub ttl: Duration,
    /// Display names are this prefix, a dash and a 4-digit number from 1.
    pub name_prefix: String,
    /// Rank of every synthetic user.
    pub rank: u8,
    /// Guild id written into the claims.
    pub guild: String,
}

/// Errors of `mint-tokens`.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// An option has a value that cannot be used.
    #[error("invalid value '{value}' for {option}: {hint}")]
    InvalidOption {
        /// Option name, such as `--count`.
        option: &'static str,
        /// The rejected value.
        value: String,
        /// Hint on a valid value.
        hint: &'static str,
    },
    /// The keys could not be created or read.
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    /// Standard output could not be written.
    #[error("failed to write tokens to standard output")]
    Output(#[source] std::io::Error),
}

impl MintError {
    /// True for errors caused by the command line, which exit with code 64.
    pub fn is_usage(&self) -> bool {
        matches!(self, MintError::InvalidOption { .. })
    }
}

/// Parses a `--ttl` value such as `90s` or `24h`.
pub fn parse_ttl(text: &str) -> Result<Duration, MintError> {
    let invalid = |hint| MintError::InvalidOption {
        option: "--ttl",
        value: text.to_owned(),
        hint,
    };
    let ttl = humantime::parse_duration(text.trim())
        .map_err(|_| invalid("use a duration with a unit, such as 90s, 30m or 24h"))?;
    if ttl < Duration::from_secs(1) {
        return Err(invalid("use a lifetime of at least 1s"));
    }
    if ttl > MAX_TTL {
        return Err(invalid("use a lifetime of at most 365 days"));
    }
    Ok(ttl)
}

/// Parses a `--freqs` value such as `1000-1099,2000` or `all`.
pub fn parse_freqs(text: &str) -> Result<FreqSet, MintError> {
    let set: FreqSet = text.parse().map_err(|_| MintError::InvalidOption {
        option: "--freqs",
        value: text.to_owned(),
        hint: "use frequencies from 1000 to 9999 as numbers or ranges, such as 1000-1099,2000",
    })?;
    if set.is_empty() {
        return Err(MintError::InvalidOption {
            option: "--freqs",
            value: text.to_owned(),
            hint: "name at least one frequency, such as 1000-1099",
        });
    }
    Ok(set)
}

impl MintOptions {
    /// Checks the values that clap cannot check on its own.
    pub fn validate(&self) -> Result<(), MintError> {
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(MintError::InvalidOption {
                option: "--count",
                value: self.count.to_string(),
                hint: "use a count from 1 to 1000000",
            });
        }
        if self.rank > MAX_RANK {
            return Err(MintError::InvalidOption {
                option: "--rank",
                value: self.rank.to_string(),
                hint: "use a rank from 0 to 100",
            });
        }
        let prefix_ok = !self.name_prefix.is_empty()
            && self.name_prefix.chars().count() <= 24
            && !self.name_prefix.chars().any(char::is_control);
        if !prefix_ok {
            return Err(MintError::InvalidOption {
                option: "--name-prefix",
                value: self.name_prefix.clone(),
                hint: "use 1 to 24 printable characters, such as user",
            });
        }
        Ok(())
    }
}

/// Display name of synthetic user `index` (counting from 0): `user-0001`.
pub fn display_name(prefix: &str, index: u32) -> String {
    format!("{prefix}-{:04}", index + 1)
}

/// Signs one token per synthetic user and writes them to `out`, one a line.
///
/// Creates the keys in the data dir when they are missing. `now` is the
/// issue time in Unix seconds.
pub fn mint_tokens(options: &MintOptions, now: u64, out: &mut impl Write) -> Result<(), MintError> {
    options.validate()?;
    keyfile::ensure_keys(&options.data_dir)?;
    let signer = keyfile::load_signer(&options.data_dir)?;
    let user_key = keyfile::load_user_id_key(&options.data_dir)?;

    for index in 0..options.count {
        let claims = Claims {
            sub: user_key.pseudonymize(SYNTHETIC_ID_BASE + u64::from(index)),
            guild: options.guild.clone(),
            name: display_name(&options.name_prefix, index),
            rank: options.rank,
            freqs: options.freqs.clone(),
            iat: now,
            exp: now + options.ttl.as_secs(),
            jti: new_token_id(),
        };
        writeln!(out, "{}", signer.sign(&claims)).map_err(MintError::Output)?;
    }
    out.flush().map_err(MintError::Output)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;

    use krt_shared::FreqId;

    use super::*;

    fn signing_key_path(data_dir: &Path) -> PathBuf {
        data_dir.join(keyfile::SIGNING_KEY_FILE)
    }

    fn options(dir: &Path, count: u32) -> MintOptions {
        MintOptions {
            data_dir: dir.to_owned(),
            count,
            freqs: FreqSet::all(),
            ttl: Duration::from_secs(3600),
            name_prefix: "user".into(),
            rank: 0,
            guild: "0".into(),
        }
    }

    fn mint_to_lines(options: &MintOptions, now: u64) -> Vec<String> {
        let mut out = Vec::new();
        mint_tokens(options, now, &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn mint_signs_distinct_users() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), 3);
        opts.freqs = "1000-1099".parse().unwrap();
        opts.rank = 5;
        opts.ttl = Duration::from_secs(90);
        let lines = mint_to_lines(&opts, 1_000_000);
        assert_eq!(lines.len(), 3);

        let verifier = keyfile::load_verifier(dir.path()).unwrap();
        let claims: Vec<Claims> = lines
            .iter()
            .map(|line| verifier.verify(line, 1_000_001).unwrap())
            .collect();
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["user-0001", "user-0002", "user-0003"]);
        let subs: HashSet<_> = claims.iter().map(|c| c.sub).collect();
        assert_eq!(subs.len(), 3, "every token belongs to its own user");
        let jtis: HashSet<_> = claims.iter().map(|c| c.jti.clone()).collect();
        assert_eq!(jtis.len(), 3, "every token has its own id");
        for c in &claims {
            assert_eq!(c.exp, 1_000_090);
            assert_eq!(c.rank, 5);
            assert!(c.allows(FreqId::new(1050).unwrap()));
            assert!(!c.allows(FreqId::new(1100).unwrap()));
        }
    }

    #[test]
    fn mint_uses_pseudonymized_synthetic_ids() {
        let dir = tempfile::tempdir().unwrap();
        let lines = mint_to_lines(&options(dir.path(), 2), 10);
        let verifier = keyfile::load_verifier(dir.path()).unwrap();
        let key = keyfile::load_user_id_key(dir.path()).unwrap();
        let second = verifier.verify(&lines[1], 11).unwrap();
        assert_eq!(second.sub, key.pseudonymize(SYNTHETIC_ID_BASE + 1));
    }

    #[test]
    fn mint_keeps_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        keyfile::ensure_keys(dir.path()).unwrap();
        let before = std::fs::read(signing_key_path(dir.path())).unwrap();
        let lines = mint_to_lines(&options(dir.path(), 1), 10);
        let after = std::fs::read(signing_key_path(dir.path())).unwrap();
        assert_eq!(before, after);
        let verifier = keyfile::load_verifier(dir.path()).unwrap();
        assert!(verifier.verify(&lines[0], 11).is_ok());
    }

    #[test]
    fn mint_rejects_bad_options() {
        let dir = tempfile::tempdir().unwrap();
        type Change = fn(&mut MintOptions);
        let cases: [(Change, &str); 4] = [
            (|o| o.count = 0, "--count"),
            (|o| o.rank = 101, "--rank"),
            (|o| o.name_prefix.clear(), "--name-prefix"),
            (|o| o.name_prefix = "a\nb".into(), "--name-prefix"),
        ];
        for (change, option) in cases {
            let mut opts = options(dir.path(), 1);
            change(&mut opts);
            let err = mint_tokens(&opts, 0, &mut Vec::new()).unwrap_err();
            assert!(err.is_usage(), "{err}");
            assert!(err.to_string().contains(option), "{err}");
        }
        assert!(
            !dir.path().join(keyfile::SIGNING_KEY_FILE).exists(),
            "invalid options create no keys"
        );
    }

    #[test]
    fn ttl_parses_units() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "24", "soon", "0s", "400days"] {
            let err = parse_ttl(bad).unwrap_err();
            assert!(err.is_usage());
            let message = err.to_string();
            assert!(message.contains("--ttl"), "{message}");
            assert!(message.contains(&format!("'{bad}'")), "{message}");
        }
    }

    #[test]
    fn freqs_parse_lists() {
        assert_eq!(parse_freqs("all").unwrap(), FreqSet::all());
        assert_eq!(parse_freqs("1000-1099").unwrap().len(), 100);
        for bad in ["", "abc", "10-20", "1100-1000"] {
            let message = parse_freqs(bad).unwrap_err().to_string();
            assert!(message.contains("--freqs"), "{message}");
            assert!(message.contains(&format!("'{bad}'")), "{message}");
        }
    }

    #[test]
    fn display_name_pads_number() {
        assert_eq!(display_name("user", 0), "user-0001");
        assert_eq!(display_name("bot", 12_344), "bot-12345");
    }
}
