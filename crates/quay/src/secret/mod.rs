//! Quay's encrypted columns (quay-integration.md section 8): `accesstoken.token_code` and
//! the triggers' `secure_private_key` and `secure_auth_token` are stored as
//! `v0$$<base64(nonce || ciphertext || tag)>`, AES-256-CCM with a 13-byte nonce and a
//! 16-byte tag, keyed by [`derive_key`] from `DATABASE_SECRET_KEY`.

use aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ccm::Ccm;
use ccm::aead::{Aead, KeyInit};
use ccm::consts::{U13, U16};
use rand::RngCore;

mod key;

pub use key::{KEY_LEN, SecretKeyError, derive_key};

/// AES-256-CCM as Quay's `AESCCM(key)` (16-byte tag) with 13-byte nonces.
type Aes256Ccm = Ccm<Aes256, U16, U13>;

/// The one version of the stored format.
const VERSION: &str = "v0";
/// Between the version and the data.
const SEPARATOR: &str = "$$";
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 13;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Why a stored value does not decrypt. Never holds the value, the plaintext or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// No `$$` separates a version from the data.
    #[error("not an encrypted value: Quay stores `v0$$` followed by base64")]
    NotEncrypted,
    /// A version other than `v0`.
    #[error("encrypted with format version {0:?}; only v0 is known (a newer Quay?)")]
    UnknownVersion(String),
    /// The data is not standard base64 or too short to hold a nonce and a tag.
    #[error("encrypted value is corrupt: {0}")]
    Corrupt(&'static str),
    /// The tag does not verify.
    #[error(
        "encrypted value does not decrypt with this DATABASE_SECRET_KEY: the key differs \
         from the one Quay's web tier uses, or the value is corrupt"
    )]
    WrongKey,
}

/// The longest plaintext AES-CCM takes with a 13-byte nonce (a 2-byte length field).
pub const MAX_PLAINTEXT: usize = 65_535;

/// A plaintext longer than [`MAX_PLAINTEXT`] (Quay's Python refuses it too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a value of {0} bytes is too long to encrypt: AES-CCM with a 13-byte nonce takes at most 65,535"
)]
pub struct TooLong(pub usize);

/// Encrypts and decrypts Quay's `v0$$` columns with one key. Its `Debug` shows no key.
#[derive(Clone)]
pub struct FieldCipher {
    cipher: Aes256Ccm,
}

impl std::fmt::Debug for FieldCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FieldCipher { .. }")
    }
}

impl FieldCipher {
    /// The cipher for a configured `DATABASE_SECRET_KEY`.
    pub fn from_config(database_secret_key: &str) -> Result<Self, SecretKeyError> {
        derive_key(database_secret_key).map(|key| Self::from_key(&key))
    }

    /// The cipher for a derived key.
    pub fn from_key(key: &[u8; KEY_LEN]) -> Self {
        Self {
            cipher: Aes256Ccm::new(&(*key).into()),
        }
    }

    /// The plaintext of a stored `v0$$...` value.
    pub fn decrypt(&self, stored: &str) -> Result<String, DecryptError> {
        let (version, data) = stored
            .split_once(SEPARATOR)
            .ok_or(DecryptError::NotEncrypted)?;
        if version != VERSION {
            // A short version is no secret; anything longer is not shown at all.
            let shown = if version.len() <= 8 && version.chars().all(|c| c.is_ascii_alphanumeric())
            {
                version.to_owned()
            } else {
                "(unreadable)".to_owned()
            };
            return Err(DecryptError::UnknownVersion(shown));
        }
        let raw = STANDARD
            .decode(data)
            .map_err(|_| DecryptError::Corrupt("not standard base64"))?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(DecryptError::Corrupt("shorter than a nonce and a tag"));
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = <&[u8; NONCE_LEN]>::try_from(nonce)
            .map_err(|_| DecryptError::Corrupt("shorter than a nonce"))?;
        let plain = self
            .cipher
            .decrypt(&(*nonce).into(), sealed)
            .map_err(|_| DecryptError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| DecryptError::Corrupt("plaintext is not UTF-8"))
    }

    /// `plaintext` as Quay's web tier stores it, with a fresh random nonce.
    pub fn encrypt(&self, plaintext: &str) -> Result<String, TooLong> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        self.encrypt_with_nonce(plaintext, &nonce)
    }

    /// `plaintext` encrypted under a given nonce: for known answers only; a nonce must
    /// never be used twice with one key.
    pub fn encrypt_with_nonce(
        &self,
        plaintext: &str,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<String, TooLong> {
        let too_long = TooLong(plaintext.len());
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(too_long);
        }
        let sealed = self
            .cipher
            .encrypt(&(*nonce).into(), plaintext.as_bytes())
            .map_err(|_| too_long)?;
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(nonce);
        raw.extend_from_slice(&sealed);
        Ok(format!("{VERSION}{SEPARATOR}{}", STANDARD.encode(raw)))
    }
}
