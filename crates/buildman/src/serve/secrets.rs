//! The keys the manager holds: the token signing key, the API tokens and the sealing key of
//! build secrets, generated into the data dir (mode 0600) on first start unless configured.

use std::path::Path;

use anyhow::Context;
use buildman_core::config::Config;
use buildman_manager::{KeyPair, SealingKey, TokenService, sealing};

/// The token service: the configured signing key or the data dir's, plus trusted keys.
pub(super) fn token_service(config: &Config, data_dir: &Path) -> anyhow::Result<TokenService> {
    let signing = match &config.signing_key {
        Some(k) => {
            let pem = std::fs::read_to_string(&k.private_key_path).with_context(|| {
                format!(
                    "BUILDMAN_JWT_SIGNING_KEY: reading {}",
                    k.private_key_path.display()
                )
            })?;
            KeyPair::from_private_pem(Some(k.kid.clone()), &pem)
                .map_err(|e| anyhow::anyhow!("BUILDMAN_JWT_SIGNING_KEY: {e}"))?
        }
        None => KeyPair::load_or_generate(data_dir)?,
    };
    let mut trusted = Vec::new();
    for k in &config.trusted_keys {
        let pem = std::fs::read_to_string(&k.public_key_path).with_context(|| {
            format!(
                "BUILDMAN_JWT_TRUSTED_KEYS: reading {}",
                k.public_key_path.display()
            )
        })?;
        trusted.push((k.kid.clone(), pem));
    }
    Ok(TokenService::new(
        config.token_audience(),
        &signing,
        &trusted,
    )?)
}

/// The API tokens: the configured ones plus the admin token kept in the data dir, which is
/// generated (mode 0600) on first start and returned so the caller can print it once.
pub(super) fn api_tokens(
    config: &Config,
    data_dir: &Path,
) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let path = data_dir.join("admin-token");
    let mut tokens = config.api_tokens.clone();
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        tokens.push(token.trim().to_string());
        return Ok((tokens, None));
    }
    let token = buildman_contexts::new_id();
    write_secret(&path, format!("{token}\n").as_bytes())?;
    tokens.push(token.clone());
    Ok((tokens, Some(token)))
}

/// The key build secrets are sealed with: BUILDMAN_SEALING_KEY_FILE, or the data dir's
/// `sealing-key`, generated on first start.
pub(super) fn sealing_key(config: &Config, data_dir: &Path) -> anyhow::Result<SealingKey> {
    let (path, configured) = match &config.sealing_key_file {
        Some(path) => (path.clone(), true),
        None => (data_dir.join("sealing-key"), false),
    };
    if !configured && !path.exists() {
        write_secret(&path, &SealingKey::generate()?)?;
    }
    let bytes = std::fs::read(&path)
        .with_context(|| format!("BUILDMAN_SEALING_KEY_FILE: reading {}", path.display()))?;
    SealingKey::new(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "BUILDMAN_SEALING_KEY_FILE {}: {e} (make one with `head -c {} /dev/urandom`)",
            path.display(),
            sealing::KEY_LEN
        )
    })
}

/// Writes a new file only its owner can read (0600); refuses to overwrite one.
fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}
