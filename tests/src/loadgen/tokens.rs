//! Tokens for the simulated users: read from a file, minted in-process from
//! the relay's data directory, or both.

use std::fs;
use std::path::{Path, PathBuf};

use krt_shared::FreqSet;
use krt_shared::keyfile::{self, KeyFileError};
use krt_shared::token::{Claims, new_token_id};

/// Synthetic Discord ids of minted users start here, far above the
/// snowflakes Discord hands out today, so they never match a real member.
const SYNTHETIC_DISCORD_ID_BASE: u64 = 9_000_000_000_000_000_000;

/// Errors getting tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenSourceError {
    /// The token file could not be read.
    #[error("failed to read token file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The keys in the data directory could not be created or loaded.
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    /// Fewer tokens than connections, and no data directory to mint the rest.
    #[error(
        "{have} tokens for {need} connections: print more with `krt-bot mint-tokens --count {need}`, or pass --data-dir to mint them"
    )]
    TooFew {
        /// Tokens available.
        have: usize,
        /// Connections to make.
        need: usize,
    },
}

/// Reads one token per line from `path`, skipping blank lines.
pub fn read_token_file(path: &Path) -> Result<Vec<String>, TokenSourceError> {
    let text = fs::read_to_string(path).map_err(|source| TokenSourceError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Mints `count` tokens for distinct synthetic users with the signing key in
/// `data_dir`, creating the keys there when they are missing. `now` and
/// `ttl_secs` are Unix seconds and seconds.
pub fn mint_tokens(
    data_dir: &Path,
    count: usize,
    freqs: &FreqSet,
    now: u64,
    ttl_secs: u64,
) -> Result<Vec<String>, TokenSourceError> {
    keyfile::ensure_keys(data_dir)?;
    let signer = keyfile::load_signer(data_dir)?;
    let user_key = keyfile::load_user_id_key(data_dir)?;
    let tokens = (0..count)
        .map(|index| {
            let claims = Claims {
                sub: user_key.pseudonymize(SYNTHETIC_DISCORD_ID_BASE + index as u64),
                guild: "krt-loadgen".to_owned(),
                name: format!("loadgen-{index}"),
                // All users share one rank, the default of `krt-bot
                // mint-tokens`, so no talker can preempt another.
                rank: 0,
                freqs: freqs.clone(),
                iat: now,
                exp: now + ttl_secs,
                jti: new_token_id(),
            };
            signer.sign(&claims)
        })
        .collect();
    Ok(tokens)
}

/// Collects `need` tokens: those in `file` first, then minted ones from
/// `data_dir` for the rest.
pub fn collect_tokens(
    file: Option<&Path>,
    data_dir: Option<&Path>,
    need: usize,
    freqs: &FreqSet,
    now: u64,
    ttl_secs: u64,
) -> Result<Vec<String>, TokenSourceError> {
    let mut tokens = match file {
        Some(path) => read_token_file(path)?,
        None => Vec::new(),
    };
    tokens.truncate(need);
    if tokens.len() < need {
        let Some(dir) = data_dir else {
            return Err(TokenSourceError::TooFew {
                have: tokens.len(),
                need,
            });
        };
        let minted = mint_tokens(dir, need - tokens.len(), freqs, now, ttl_secs)?;
        tokens.extend(minted);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_with_relay_key() {
        let dir = tempfile::tempdir().unwrap();
        let freqs: FreqSet = "1000-1005".parse().unwrap();
        let tokens = mint_tokens(dir.path(), 3, &freqs, 1_000_000, 3600).unwrap();
        assert_eq!(tokens.len(), 3);
        let verifier = keyfile::load_verifier(dir.path()).unwrap();
        let subjects: Vec<_> = tokens
            .iter()
            .map(|token| verifier.verify(token, 1_000_001).unwrap())
            .map(|claims| {
                assert_eq!(claims.freqs, freqs);
                assert_eq!(claims.exp, 1_003_600);
                claims.sub
            })
            .collect();
        assert_ne!(subjects[0], subjects[1]);
        assert_ne!(subjects[1], subjects[2]);
    }

    #[test]
    fn file_tokens_first_then_minted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.txt");
        fs::write(&file, "krt1.a.b\n\n  krt1.c.d  \n").unwrap();
        let keys = dir.path().join("data");
        let freqs = FreqSet::all();
        let tokens = collect_tokens(Some(&file), Some(&keys), 4, &freqs, 10, 60).unwrap();
        assert_eq!(tokens.len(), 4);
        assert_eq!(tokens[0], "krt1.a.b");
        assert_eq!(tokens[1], "krt1.c.d");
        assert!(tokens[2].starts_with("krt1."));
    }

    #[test]
    fn too_few_tokens_without_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.txt");
        fs::write(&file, "krt1.a.b\n").unwrap();
        let err = collect_tokens(Some(&file), None, 5, &FreqSet::all(), 10, 60).unwrap_err();
        assert!(matches!(err, TokenSourceError::TooFew { have: 1, need: 5 }));
        assert!(err.to_string().contains("--count 5"), "{err}");
    }

    #[test]
    fn missing_token_file_names_path() {
        let err = read_token_file(Path::new("/nonexistent/tokens.txt")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tokens.txt"), "{err}");
    }
}
