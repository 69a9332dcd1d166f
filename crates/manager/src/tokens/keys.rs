//! The manager's RSA signing key: generated into the data dir on first start (mode 0600) or
//! read from the configured file, with the `kid` that names it in token headers.
//!
//! The `rsa` crate is used here only, once at start, to generate a key and to convert PEM
//! forms (PKCS#8 or PKCS#1 private key to the public key's PEM). Every signature and
//! verification goes through ring (see `super::ring`).

use std::path::Path;

use super::TokenError;

/// An RSA key pair in PEM, with the id that names it in token headers.
#[derive(Clone)]
pub struct KeyPair {
    pub kid: String,
    pub private_pem: String,
    pub public_pem: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Generates a 2048-bit key pair; its `kid` is derived from the public key.
    pub fn generate() -> Result<Self, TokenError> {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let key = |e: &dyn std::fmt::Display| TokenError::Key(format!("key generation: {e}"));
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| key(&e))?;
        let private_pem = private.to_pkcs8_pem(LineEnding::LF).map_err(|e| key(&e))?;
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| key(&e))?;
        Ok(KeyPair {
            kid: kid_of(&public_pem),
            private_pem: private_pem.to_string(),
            public_pem,
        })
    }

    /// Reads `signing-key.pem` from `dir`, or generates it (mode 0600) on first start.
    pub fn load_or_generate(dir: &Path) -> Result<Self, TokenError> {
        let path = dir.join("signing-key.pem");
        let io =
            |e: std::io::Error| TokenError::Key(format!("signing key {}: {e}", path.display()));
        if path.exists() {
            let private_pem = std::fs::read_to_string(&path).map_err(io)?;
            return Self::from_private_pem(None, &private_pem)
                .map_err(|e| TokenError::Key(format!("signing key {}: {e}", path.display())));
        }
        let pair = Self::generate()?;
        std::fs::create_dir_all(dir).map_err(io)?;
        write_private(&path, &pair.private_pem).map_err(io)?;
        Ok(pair)
    }

    /// A key pair from a private key in PKCS#8 or PKCS#1 PEM; `kid` defaults to one derived
    /// from the public key.
    pub fn from_private_pem(kid: Option<String>, private_pem: &str) -> Result<Self, String> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(private_pem))
            .map_err(|e| format!("not an RSA private key in PEM: {e}"))?;
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        Ok(KeyPair {
            kid: kid.unwrap_or_else(|| kid_of(&public_pem)),
            private_pem: private_pem.to_string(),
            public_pem,
        })
    }
}

/// The first 12 bytes of SHA-256 of the public key's PEM, in hex: stable across restarts,
/// so tokens issued before a restart still name a known key.
fn kid_of(public_pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_pem.as_bytes());
    hex::encode(&digest.as_ref()[..12])
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}
