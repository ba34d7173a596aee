//! The secret that signs access and refresh tokens.

use std::fmt;
use std::path::Path;

use crate::error::ServerError;

/// Bytes of a secret made by [`TokenSecret::random`] and
/// [`TokenSecret::load_or_create`], and the least any secret may have.
pub const MIN_SECRET_BYTES: usize = 32;

/// The secret that signs tokens (HMAC-SHA256), at least 32 bytes. Every
/// server of a deployment uses the same one; a token signed with another
/// secret is refused, so changing it logs everybody out.
///
/// `Debug` shows its length, never its bytes, so logging a
/// [`ServerConfig`](crate::ServerConfig) leaks nothing.
///
/// ```no_run
/// use chat_server::{ServerConfig, TokenSecret};
///
/// # fn run() -> Result<(), chat_server::ServerError> {
/// // Made once (random, file mode 0600), read on every later start.
/// let secret = TokenSecret::load_or_create("./chat-data/token.secret")?;
/// let config = ServerConfig { token_secret: secret, ..ServerConfig::default() };
/// # let _ = config;
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenSecret(Vec<u8>);

impl TokenSecret {
    /// A secret of these bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// A fresh random secret, good for one process: tokens die with it.
    /// For tests and single-run demos; a server people come back to keeps
    /// its secret ([`TokenSecret::load_or_create`]).
    pub fn random() -> Self {
        Self(hex(&rand::random::<[u8; MIN_SECRET_BYTES]>()).into_bytes())
    }

    /// The secret in the file at `path`, surrounding whitespace ignored
    /// (how a secret given to every server of a deployment is read).
    ///
    /// Fails if the file cannot be read, or holds fewer than 32 bytes.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ServerError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            ServerError::io(
                format!("cannot read the token secret {}", path.display()),
                e,
            )
        })?;
        let secret = Self(bytes.trim_ascii().to_vec());
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ServerError::Config(format!(
                "{} holds fewer than {MIN_SECRET_BYTES} bytes",
                path.display()
            )));
        }
        Ok(secret)
    }

    /// The secret kept at `path`: read it if the file exists, else make a
    /// random one and write it there, readable by its owner only (mode
    /// 0600 on Unix), creating the directory if needed (0700). So a server keeps
    /// its secret, and its users their sessions, across restarts.
    ///
    /// Blocking file I/O, done once at start-up. Two processes starting at
    /// once agree on one secret (the file appears whole, and only once; the
    /// loser reads the winner's). An existing file that others can read is
    /// used, with a warning.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self, ServerError> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(meta) => {
                warn_if_readable_by_others(path, &meta);
                return Self::from_file(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ServerError::io(
                    format!("cannot read the token secret {}", path.display()),
                    e,
                ))
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                // Directories made for a secret are its owner's only.
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder
                .create(dir)
                .map_err(|e| ServerError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let secret = Self::random();
        match write_new(path, secret.as_bytes()) {
            Ok(()) => Ok(secret),
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::from_file(path),
            Err(e) => Err(ServerError::io(
                format!("cannot write the token secret {}", path.display()),
                e,
            )),
        }
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (as in [`ServerConfig::default`](crate::ServerConfig::default),
    /// which must be given a secret before it can build a server).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSecret(<{} bytes, redacted>)", self.0.len())
    }
}

impl From<Vec<u8>> for TokenSecret {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&[u8]> for TokenSecret {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl From<&str> for TokenSecret {
    fn from(text: &str) -> Self {
        Self(text.as_bytes().to_vec())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a new file at `path` (failing with `AlreadyExists` if there is
/// one) that only its owner can read, flushed to disk. It appears whole or
/// not at all: written under a temporary name, then linked in place (a
/// link never replaces an existing file), so a concurrent reader never
/// sees it half written.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    // Make the new name durable.
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "the token secret can be read by other users: chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _meta: &std::fs::Metadata) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = TokenSecret::from("a secret that nobody may ever see in a log");
        let text = format!("{secret:?}");
        assert!(!text.contains("nobody"), "{text}");
        assert!(text.contains("42 bytes"), "{text}");
    }

    #[test]
    fn load_or_create_makes_one_secret_for_the_owner_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/token.secret");
        let made = TokenSecret::load_or_create(&path).unwrap();
        assert!(made.len() >= MIN_SECRET_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        assert_eq!(TokenSecret::load_or_create(&path).unwrap(), made, "kept");
        // Concurrent starts agree on one secret.
        let path = dir.path().join("raced.secret");
        let secrets: Vec<TokenSecret> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| TokenSecret::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_secret_file_is_trimmed_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "  0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            TokenSecret::from_file(&path).unwrap().as_bytes(),
            b"0123456789abcdef0123456789abcdef"
        );
        std::fs::write(&path, "short\n").unwrap();
        let e = TokenSecret::from_file(&path).unwrap_err();
        assert_eq!(e.code(), "config", "{e}");
        assert_eq!(
            TokenSecret::load_or_create(&path).unwrap_err().code(),
            "config"
        );
        let e = TokenSecret::from_file(dir.path().join("missing")).unwrap_err();
        assert_eq!(e.code(), "io");
        assert!(!e.is_retryable());
    }

    #[test]
    fn random_secrets_are_long_enough_and_differ() {
        let (a, b) = (TokenSecret::random(), TokenSecret::random());
        assert!(a.len() >= MIN_SECRET_BYTES);
        assert_ne!(a, b);
    }
}
