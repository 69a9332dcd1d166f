//! A jsonwebtoken crypto provider backed by ring, for RS256 only.
//!
//! jsonwebtoken does the JWT part (encoding, claims, time and audience checks); ring does
//! the RSA. ring is already the process's crypto through rustls, and its RSA signs several
//! times faster than the pure-Rust `rsa` crate jsonwebtoken would otherwise use, so one RSA
//! implementation serves TLS and tokens. Anything but RS256 is refused.

use std::sync::{Arc, Mutex, Once, PoisonError};

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes ring jsonwebtoken's crypto provider for this process (idempotent). If another
/// provider was installed first, that one stays: tokens still sign and verify, more slowly.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if PROVIDER.install_default().is_err() {
            tracing::debug!("a jsonwebtoken crypto provider was already installed");
        }
    });
}

/// The last signing key parsed: parsing validates the key, which costs a good part of a
/// signature, and the manager signs with one key.
static PARSED: Mutex<Option<(Vec<u8>, Arc<RsaKeyPair>)>> = Mutex::new(None);

fn parsed(der: &[u8]) -> Result<Arc<RsaKeyPair>, Error> {
    let mut last = PARSED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((key, pair)) = last.as_ref()
        && key == der
    {
        return Ok(pair.clone());
    }
    let pair = Arc::new(RsaKeyPair::from_der(der).map_err(|_| {
        Error::from(ErrorKind::InvalidRsaKey(String::from(
            "ring refused the RSA private key (it must be 2048 to 8192 bits)",
        )))
    })?);
    *last = Some((der.to_vec(), pair.clone()));
    Ok(pair)
}

fn rs256_only(alg: &Algorithm) -> Result<(), Error> {
    match alg {
        Algorithm::RS256 => Ok(()),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    rs256_only(alg)?;
    if key.family() != AlgorithmFamily::Rsa {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(Rs256Signer(parsed(key.as_bytes())?)))
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    rs256_only(alg)?;
    if key.family() != AlgorithmFamily::Rsa {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(Rs256Verifier(key.kind().clone())))
}

struct Rs256Signer(Arc<RsaKeyPair>);

impl Signer<Vec<u8>> for Rs256Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut sig = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                msg,
                &mut sig,
            )
            .map_err(|_| signature::Error::new())?;
        Ok(sig)
    }
}

impl JwtSigner for Rs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

struct Rs256Verifier(DecodingKeyKind);

impl Verifier<Vec<u8>> for Rs256Verifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match &self.0 {
            DecodingKeyKind::SecretOrDer(der) => {
                ring::signature::UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
                    .verify(msg, sig)
            }
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                ring::signature::RsaPublicKeyComponents { n, e }.verify(
                    &RSA_PKCS1_2048_8192_SHA256,
                    msg,
                    sig,
                )
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Rs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}
