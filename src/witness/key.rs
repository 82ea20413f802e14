//! A witness's own Ed25519 key: a file holding the base64 of its 32-byte
//! seed, made on first start, readable by its owner only.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ring::rand::{SecureRandom as _, SystemRandom};

/// The key in `path`, made there when there is none.
pub fn load_or_create(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
                .and_then(|seed| <[u8; 32]>::try_from(seed).ok())
                .with_context(|| format!("{} does not hold a witness key", path.display()))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn create(path: &Path) -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow::anyhow!("no randomness for a witness key"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(seed)
        )
        .as_bytes(),
    )?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "made a new witness key");
    Ok(SigningKey::from_bytes(&seed))
}
