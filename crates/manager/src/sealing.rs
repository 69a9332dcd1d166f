//! Secrets a build carries through the store (a git deploy key) are sealed at rest with
//! AES-256-GCM (ring's AEAD) under the manager's sealing key, and opened only to hand them
//! to the build's worker. A sealed value is `aes256gcm:` + hex(nonce ‖ ciphertext ‖ tag).
//! Managers sharing a database must share the key (BUILDMAN_SEALING_KEY_FILE).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The length of a sealing key, in bytes.
pub const KEY_LEN: usize = 32;
/// What a sealed value starts with (the scheme, so another can follow).
const PREFIX: &str = "aes256gcm:";
/// Binds a sealed value to its use: a value sealed for something else does not open.
const AAD: &[u8] = b"buildman build secret v1";

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key is not [`KEY_LEN`] bytes.
    #[error("a sealing key is {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    /// No randomness for a nonce.
    #[error("no randomness for a nonce")]
    Random,
    /// Not a sealed value, sealed under another key, or altered.
    #[error(
        "a sealed secret does not open with this manager's sealing key (another key, or altered)"
    )]
    Open,
}

/// The manager's sealing key. `Debug` never shows it.
pub struct SealingKey {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    /// A key from its [`KEY_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, SealError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::KeyLength(bytes.len()))?;
        Ok(SealingKey {
            key: LessSafeKey::new(unbound),
            random: SystemRandom::new(),
        })
    }

    /// [`KEY_LEN`] fresh random bytes for a new key.
    pub fn generate() -> Result<[u8; KEY_LEN], SealError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        Ok(bytes)
    }

    /// Seals `secret` under a fresh random nonce.
    pub fn seal(&self, secret: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut sealed,
            )
            .map_err(|_| SealError::Random)?;
        Ok(format!(
            "{PREFIX}{}{}",
            hex::encode(nonce),
            hex::encode(sealed)
        ))
    }

    /// Opens a value [`SealingKey::seal`] made.
    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        let bytes = (sealed.strip_prefix(PREFIX))
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or(SealError::Open)?;
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut rest = rest.to_vec();
        let plain = (self.key)
            .open_in_place(nonce, Aad::from(AAD), &mut rest)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }

    /// True when `value` is sealed (as opposed to a secret stored before sealing existed).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_never_shows() {
        let key = SealingKey::new(&SealingKey::generate().unwrap()).unwrap();
        let secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE\n-----END OPENSSH PRIVATE KEY-----\n";
        let sealed = key.seal(secret).unwrap();
        assert!(SealingKey::is_sealed(&sealed));
        // Long enough that random output cannot hold them by chance (three letters could).
        assert!(!sealed.contains("OPENSSH") && !sealed.contains("b3BlbnNzaC1rZXktdjE"));
        assert_ne!(sealed, key.seal(secret).unwrap(), "a fresh nonce each time");
        assert_eq!(key.open(&sealed).unwrap(), secret);

        let other = SealingKey::new(&SealingKey::generate().unwrap()).unwrap();
        assert!(matches!(other.open(&sealed), Err(SealError::Open)));
        let mut altered = sealed.clone();
        let flipped = if sealed.ends_with('0') { "1" } else { "0" };
        altered.replace_range(sealed.len() - 1.., flipped);
        assert!(key.open(&altered).is_err());
        assert!(key.open("plain text").is_err());
        assert!(matches!(
            SealingKey::new(&[0; 16]),
            Err(SealError::KeyLength(16))
        ));
        assert_eq!(format!("{key:?}"), "SealingKey(<redacted>)");
    }
}
