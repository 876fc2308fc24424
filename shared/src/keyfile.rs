//! Key files in the data directory, and the private creation of the SQLite
//! database file there.
//!
//! This is the one module of the crate that touches the file system. Both
//! processes read the same data directory, so the file names and formats
//! live here:
//!
//! - `signing.key`: Ed25519 secret key, base64, mode 0600 (bot only);
//! - `signing.pub`: Ed25519 public key, base64 (relay);
//! - `userid.key`: secret of the pseudonymous id hash, base64, mode 0600.
//!
//! Secret files readable by group or others are rejected.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::token::{TokenSigner, TokenVerifier, decode_key, encode_key};
use crate::user::UserIdKey;

/// File name of the Ed25519 secret key.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// File name of the Ed25519 public key.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";
/// File name of the pseudonymous id secret.
pub const USER_ID_KEY_FILE: &str = "userid.key";

/// Errors reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("failed to access key file {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file does not contain a valid key.
    #[error("invalid key file {path}: {detail}")]
    Invalid {
        /// File path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A secret key file can be read by group or others.
    #[error(
        "key file {path} has mode {mode:o} and is readable by other users: run `chmod 600 {path}`"
    )]
    TooOpen {
        /// File path.
        path: PathBuf,
        /// Permission bits found.
        mode: u32,
    },
    /// The public key file is missing and no secret key exists to derive it.
    #[error("public key {path} not found: start krt-relay or krt-bot once to create the keys")]
    MissingPublic {
        /// File path.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What [`ensure_keys`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// The keys already existed.
    Existing,
    /// A new key pair was written.
    Created,
}

/// Creates the signing key pair in `dir` when neither key file exists, and
/// the user id secret when it is missing. Existing key files are never
/// overwritten: a public key without its secret key (a relay whose bot keeps
/// the secret elsewhere) is kept, and a public key that does not decode, or
/// a secret file readable by other users, is an error. Secret files that
/// exist are only checked for their mode, never read.
pub fn ensure_keys(dir: &Path) -> Result<KeyStatus, KeyFileError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let secret_path = dir.join(SIGNING_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    let status = match (secret_path.exists(), public_path.exists()) {
        (false, false) => {
            let signer = TokenSigner::generate();
            write_secret(&secret_path, &encode_key(&signer.secret_bytes()))?;
            write_public(&public_path, &signer.verifier().to_base64())?;
            KeyStatus::Created
        }
        (true, false) => {
            let signer = load_signer(dir)?;
            write_public(&public_path, &signer.verifier().to_base64())?;
            KeyStatus::Existing
        }
        (true, true) => {
            check_mode(&secret_path)?;
            load_verifier(dir)?;
            KeyStatus::Existing
        }
        (false, true) => {
            load_verifier(dir)?;
            KeyStatus::Existing
        }
    };
    let user_key_path = dir.join(USER_ID_KEY_FILE);
    if user_key_path.exists() {
        check_mode(&user_key_path)?;
    } else {
        let secret: [u8; 32] = rand::random();
        write_secret(&user_key_path, &encode_key(&secret))?;
    }
    Ok(status)
}

/// Returns the SQLite file named by `url` when SQLite may create it
/// (`sqlite://PATH?mode=rwc`), or `None` for other URLs.
fn sqlite_file_to_create(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    let (path, query) = rest.split_once('?')?;
    let creates = query.split('&').any(|pair| pair == "mode=rwc");
    (creates && !path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Creates the SQLite file of `url`, if SQLite may create it and it does not
/// exist yet, as an empty file that only its owner may read and write. The
/// error names the file.
pub fn create_private_sqlite_file(url: &str) -> std::io::Result<()> {
    let Some(path) = sqlite_file_to_create(url) else {
        return Ok(());
    };
    create_private_file(&path).map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("failed to create {}: {err}", path.display()),
        )
    })
}

/// Creates `path` as an empty file that only its owner may read and write,
/// unless it exists. SQLite accepts an empty file as a new database and
/// gives its WAL and shared-memory files the same mode, so rows and
/// pseudonymous ids stay private even outside a private directory.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Loads the token signer from `dir/signing.key`.
pub fn load_signer(dir: &Path) -> Result<TokenSigner, KeyFileError> {
    let path = dir.join(SIGNING_KEY_FILE);
    let secret = read_secret(&path)?;
    Ok(TokenSigner::from_secret(&secret))
}

/// Loads the token verifier from `dir/signing.pub`.
pub fn load_verifier(dir: &Path) -> Result<TokenVerifier, KeyFileError> {
    let path = dir.join(PUBLIC_KEY_FILE);
    if !path.exists() {
        return Err(KeyFileError::MissingPublic { path });
    }
    let text = fs::read_to_string(&path).map_err(io_error(&path))?;
    TokenVerifier::from_base64(&text).map_err(|e| KeyFileError::Invalid {
        path,
        detail: e.to_string(),
    })
}

/// Loads the pseudonymous id secret from `dir/userid.key`.
pub fn load_user_id_key(dir: &Path) -> Result<UserIdKey, KeyFileError> {
    let secret = read_secret(&dir.join(USER_ID_KEY_FILE))?;
    Ok(UserIdKey::from_bytes(secret))
}

/// Rejects a secret file readable by group or others. Only the metadata is
/// read, so the relay checks the bot's secret without loading it.
fn check_mode(path: &Path) -> Result<(), KeyFileError> {
    let metadata = fs::metadata(path).map_err(io_error(path))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn read_secret(path: &Path) -> Result<[u8; 32], KeyFileError> {
    check_mode(path)?;
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    decode_key(&text).map_err(|detail| KeyFileError::Invalid {
        path: path.to_owned(),
        detail,
    })
}

fn write_secret(path: &Path, text: &str) -> Result<(), KeyFileError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    writeln!(file, "{text}").map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn write_public(path: &Path, text: &str) -> Result<(), KeyFileError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(io_error(path))?;
    writeln!(file, "{text}").map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_url_names_file_to_create() {
        assert_eq!(
            sqlite_file_to_create("sqlite:///var/lib/krt/krt.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/krt/krt.db"))
        );
        assert_eq!(
            sqlite_file_to_create("sqlite://./data/krt.db?mode=ro"),
            None
        );
        assert_eq!(sqlite_file_to_create("sqlite::memory:"), None);
        assert_eq!(sqlite_file_to_create("postgres://krt@localhost/krt"), None);
    }

    #[test]
    fn private_file_is_created_once() {
        let path = temp_dir("sqlite").join("krt.db");
        create_private_file(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(&path, b"kept").unwrap();
        create_private_file(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"kept");
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "krt-keyfile-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn ensure_keys_creates_once() {
        let dir = temp_dir("create");
        assert_eq!(ensure_keys(&dir).unwrap(), KeyStatus::Created);
        let first = fs::read_to_string(dir.join(SIGNING_KEY_FILE)).unwrap();
        assert_eq!(ensure_keys(&dir).unwrap(), KeyStatus::Existing);
        assert_eq!(
            fs::read_to_string(dir.join(SIGNING_KEY_FILE)).unwrap(),
            first
        );
        let mode = fs::metadata(dir.join(SIGNING_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let signer = load_signer(&dir).unwrap();
        let verifier = load_verifier(&dir).unwrap();
        assert_eq!(signer.verifier().to_base64(), verifier.to_base64());
        load_user_id_key(&dir).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn open_secret_rejected() {
        let dir = temp_dir("open");
        ensure_keys(&dir).unwrap();
        let path = dir.join(SIGNING_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_signer(&dir).unwrap_err();
        assert!(
            matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn public_key_alone_is_kept() {
        let dir = temp_dir("public");
        ensure_keys(&dir).unwrap();
        let public = fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap();
        fs::remove_file(dir.join(SIGNING_KEY_FILE)).unwrap();
        assert_eq!(ensure_keys(&dir).unwrap(), KeyStatus::Existing);
        assert_eq!(
            fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap(),
            public
        );
        assert!(!dir.join(SIGNING_KEY_FILE).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn invalid_public_key_rejected_not_replaced() {
        let dir = temp_dir("garbage");
        fs::write(dir.join(PUBLIC_KEY_FILE), "garbage\n").unwrap();
        let err = ensure_keys(&dir).unwrap_err();
        assert!(matches!(err, KeyFileError::Invalid { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap(),
            "garbage\n"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ensure_keys_rejects_open_secrets() {
        let dir = temp_dir("open-ensure");
        ensure_keys(&dir).unwrap();
        for file in [SIGNING_KEY_FILE, USER_ID_KEY_FILE] {
            let path = dir.join(file);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = ensure_keys(&dir).unwrap_err();
            assert!(matches!(err, KeyFileError::TooOpen { .. }), "{file}: {err}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_public_key_explained() {
        let dir = temp_dir("missing");
        let err = load_verifier(&dir).unwrap_err();
        assert!(matches!(err, KeyFileError::MissingPublic { .. }));
        fs::remove_dir_all(dir).unwrap();
    }
}
