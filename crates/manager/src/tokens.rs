//! The tokens workers present: RS256 JWTs with a `kid`, in the claims layout of Quay's
//! build manager (see the worker protocol's "Tokens" section).
//!
//! Several public keys can be trusted at once, so a signing key can be rotated without
//! invalidating the tokens of workers already running.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use buildman_core::BuildId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ManagerError;

/// The issuer written into every token.
pub const ISSUER: &str = "buildman";
/// Clock skew tolerated between manager and worker, as in Quay.
const LEEWAY_S: u64 = 30;

/// Which of the two kinds a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenType {
    /// Presented once, to RegisterBuildJob.
    #[serde(rename = "build_job_registration")]
    Registration,
    /// Presented on every call after registration.
    #[serde(rename = "build_job_token")]
    Job,
}

/// The `context` claim: what the token is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenContext {
    pub token_type: TokenType,
    pub build_id: BuildId,
    /// The orchestrator key of the job.
    pub job_id: String,
    /// The token's lifetime in seconds.
    pub expiration: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    context: TokenContext,
}

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
    pub fn generate() -> Result<Self, ManagerError> {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let internal =
            |e: &dyn std::fmt::Display| ManagerError::Internal(format!("key generation: {e}"));
        let private =
            rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| internal(&e))?;
        let private_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| internal(&e))?;
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| internal(&e))?;
        Ok(KeyPair {
            kid: kid_of(&public_pem),
            private_pem: private_pem.to_string(),
            public_pem,
        })
    }

    /// Reads `signing-key.pem` from `dir`, or generates it (mode 0600) on first start.
    pub fn load_or_generate(dir: &Path) -> Result<Self, ManagerError> {
        let path = dir.join("signing-key.pem");
        let io = |e: std::io::Error| {
            ManagerError::Internal(format!("signing key {}: {e}", path.display()))
        };
        if path.exists() {
            let private_pem = std::fs::read_to_string(&path).map_err(io)?;
            return Self::from_private_pem(None, &private_pem).map_err(|e| {
                ManagerError::Internal(format!("signing key {}: {e}", path.display()))
            });
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

fn kid_of(public_pem: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(public_pem.as_bytes())[..12])
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

/// Issues and verifies worker tokens.
pub struct TokenService {
    audience: String,
    kid: String,
    signing: EncodingKey,
    /// The signing key as ring holds it. The manager signs two tokens per build, and ring's
    /// RSA takes a fraction of the time of the pure-Rust `rsa` crate jsonwebtoken uses.
    /// `None` for a key ring refuses (fewer than 2048 bits): jsonwebtoken signs then.
    fast_signing: Option<ring::signature::RsaKeyPair>,
    rng: ring::rand::SystemRandom,
    trusted: HashMap<String, DecodingKey>,
    /// Job tokens verified before, so that the calls of a job (each carries its token)
    /// cost one signature check rather than one each.
    verified: Mutex<VerifiedTokens>,
}

/// Successful verifications of job tokens, by SHA-256 of the token: the context and until
/// when (unix seconds, clock skew included) the token is valid. Only a token whose hash
/// matches (that is, the same token) is answered from here.
#[derive(Default)]
struct VerifiedTokens(HashMap<[u8; 32], (TokenContext, u64)>);

/// At most this many verified tokens are remembered; past it, the expired ones go, and if
/// that is not enough all of them (they are checked again on their next use).
const VERIFIED_TOKENS_MAX: usize = 32 * 1024;

impl VerifiedTokens {
    fn get(&self, hash: &[u8; 32], expected: TokenType, now: u64) -> Option<(TokenContext, u64)> {
        let (context, valid_until) = self.0.get(hash)?;
        (context.token_type == expected && now <= *valid_until)
            .then(|| (context.clone(), *valid_until))
    }

    fn insert(&mut self, hash: [u8; 32], context: TokenContext, valid_until: u64, now: u64) {
        if self.0.len() >= VERIFIED_TOKENS_MAX {
            self.0.retain(|_, (_, until)| now <= *until);
            if self.0.len() >= VERIFIED_TOKENS_MAX {
                self.0.clear();
            }
        }
        self.0.insert(hash, (context, valid_until));
    }
}

/// `key` as ring's RSA key pair, if ring takes it.
fn ring_key(private_pem: &str) -> Option<ring::signature::RsaKeyPair> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(private_pem))
        .ok()?;
    let der = private.to_pkcs8_der().ok()?;
    match ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes()) {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::warn!(error = %e, "the signing key cannot be used with ring; signing tokens the slow way");
            None
        }
    }
}

/// An RS256 JWT exactly as `jsonwebtoken::encode` makes it (base64url JSON header and
/// claims, PKCS#1 v1.5 SHA-256 signature), signed by ring.
fn sign_with_ring(
    key: &ring::signature::RsaKeyPair,
    rng: &ring::rand::SystemRandom,
    header: &Header,
    claims: &Claims,
) -> Result<String, ManagerError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let internal =
        |what: &dyn std::fmt::Display| ManagerError::Internal(format!("signing a token: {what}"));
    let header = serde_json::to_vec(header).map_err(|e| internal(&e))?;
    let claims = serde_json::to_vec(claims).map_err(|e| internal(&e))?;
    let mut token = b64.encode(header);
    token.push('.');
    b64.encode_string(claims, &mut token);
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        rng,
        token.as_bytes(),
        &mut signature,
    )
    .map_err(|e| internal(&e))?;
    token.push('.');
    b64.encode_string(signature, &mut token);
    Ok(token)
}

impl TokenService {
    /// Signs with `signing`; verifies tokens signed by it or by any of `trusted`
    /// (`(kid, public key PEM)` pairs).
    pub fn new(
        audience: impl Into<String>,
        signing: &KeyPair,
        trusted: &[(String, String)],
    ) -> Result<Self, ManagerError> {
        let bad = |kid: &str, e: jsonwebtoken::errors::Error| {
            ManagerError::Invalid(format!("key {kid:?} is not a usable RSA key: {e}"))
        };
        let mut keys = HashMap::new();
        keys.insert(
            signing.kid.clone(),
            DecodingKey::from_rsa_pem(signing.public_pem.as_bytes())
                .map_err(|e| bad(&signing.kid, e))?,
        );
        for (kid, pem) in trusted {
            keys.insert(
                kid.clone(),
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| bad(kid, e))?,
            );
        }
        Ok(TokenService {
            audience: audience.into(),
            kid: signing.kid.clone(),
            signing: EncodingKey::from_rsa_pem(signing.private_pem.as_bytes())
                .map_err(|e| bad(&signing.kid, e))?,
            fast_signing: ring_key(&signing.private_pem),
            rng: ring::rand::SystemRandom::new(),
            trusted: keys,
            verified: Mutex::default(),
        })
    }

    /// A signed token of `token_type` for a job, valid for `lifetime`.
    pub fn issue(
        &self,
        token_type: TokenType,
        build_id: BuildId,
        job_id: &str,
        lifetime: Duration,
    ) -> Result<String, ManagerError> {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.to_string(),
            aud: self.audience.clone(),
            sub: "(anonymous)".to_string(),
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs(),
            context: TokenContext {
                token_type,
                build_id,
                job_id: job_id.to_string(),
                expiration: lifetime.as_secs(),
            },
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        match &self.fast_signing {
            Some(key) => sign_with_ring(key, &self.rng, &header, &claims),
            None => jsonwebtoken::encode(&header, &claims, &self.signing)
                .map_err(|e| ManagerError::Internal(format!("signing a token: {e}"))),
        }
    }

    /// Checks signature, audience, issuer, time and kind; returns the token's context.
    /// Errors say why, for the worker's operator; they never echo the token.
    pub fn verify(&self, token: &str, expected: TokenType) -> Result<TokenContext, ManagerError> {
        self.verify_until(token, expected)
            .map(|(context, _)| context)
    }

    /// Like [`TokenService::verify`], and also says until when (unix seconds, clock skew
    /// included) the token stays valid, so a caller may reuse the result until then.
    pub fn verify_until(
        &self,
        token: &str,
        expected: TokenType,
    ) -> Result<(TokenContext, u64), ManagerError> {
        use sha2::Digest;
        if expected == TokenType::Registration {
            // Presented once: nothing to gain from remembering it.
            return self.verify_signed(token, expected);
        }
        let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        let lock = || self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = lock().get(&hash, expected, now) {
            return Ok(hit);
        }
        let (context, valid_until) = self.verify_signed(token, expected)?;
        lock().insert(hash, context.clone(), valid_until, now);
        Ok((context, valid_until))
    }

    /// The full check: signature, claims, time and kind.
    fn verify_signed(
        &self,
        token: &str,
        expected: TokenType,
    ) -> Result<(TokenContext, u64), ManagerError> {
        let unauth = |m: String| ManagerError::Unauthenticated(m);
        if token.is_empty() {
            return Err(unauth(
                "no token: the request carries an empty job_jwt".into(),
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauth(format!("malformed token: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(unauth(format!(
                "token algorithm {:?} is not RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| unauth("token has no kid header naming its signing key".into()))?;
        let key = self
            .trusted
            .get(&kid)
            .ok_or_else(|| unauth(format!("token signed by unknown key {kid:?}")))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            unauth(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired".to_string(),
                ErrorKind::ImmatureSignature => "token not yet valid".to_string(),
                ErrorKind::InvalidSignature => "token signature does not verify".to_string(),
                ErrorKind::InvalidAudience => {
                    "token is for another build manager (audience)".to_string()
                }
                _ => format!("invalid token: {e}"),
            })
        })?;
        let valid_until = data.claims.exp.saturating_add(LEEWAY_S);
        let context = data.claims.context;
        if context.token_type != expected {
            let what = |t| match t {
                TokenType::Registration => "a registration token",
                TokenType::Job => "a job token",
            };
            return Err(unauth(format!(
                "{} was presented where {} is required",
                what(context.token_type),
                what(expected)
            )));
        }
        Ok((context, valid_until))
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_verifications_keep_kind_and_lifetime() {
        let pair = KeyPair::generate().unwrap();
        let service = TokenService::new("aud", &pair, &[]).unwrap();
        let id = BuildId::new();
        let token = service
            .issue(TokenType::Job, id, "building/x", Duration::from_secs(60))
            .unwrap();
        let (first, until) = service.verify_until(&token, TokenType::Job).unwrap();
        // The second answer comes from memory and is the same.
        assert_eq!(
            service.verify_until(&token, TokenType::Job).unwrap(),
            (first, until)
        );
        // Memory never answers for another kind of token.
        let err = service.verify(&token, TokenType::Registration).unwrap_err();
        assert!(
            err.to_string().contains("a job token was presented"),
            "{err}"
        );
        // Nor past the token's validity.
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let remembered = service.verified.lock().unwrap();
        assert!(remembered.get(&hash, TokenType::Job, until).is_some());
        assert!(remembered.get(&hash, TokenType::Job, until + 1).is_none());
        // A tampered token is checked in full (and refused), not looked up.
        drop(remembered);
        let mut forged = token.clone();
        forged.push('x');
        assert!(service.verify(&forged, TokenType::Job).is_err());
    }

    #[test]
    fn ring_signed_tokens_have_jsonwebtokens_form() {
        let pair = KeyPair::generate().unwrap();
        let service = TokenService::new("aud", &pair, &[]).unwrap();
        assert!(
            service.fast_signing.is_some(),
            "a 2048-bit key is signed with ring"
        );
        let token = service
            .issue(
                TokenType::Job,
                BuildId::new(),
                "building/x",
                Duration::from_secs(60),
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some(pair.kid.as_str()));
        // Checked by jsonwebtoken against the public key alone.
        let key = DecodingKey::from_rsa_pem(pair.public_pem.as_bytes()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["aud"]);
        let data = jsonwebtoken::decode::<Claims>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims.iss, ISSUER);
        assert_eq!(data.claims.context.job_id, "building/x");
    }

    #[test]
    fn issue_and_verify_with_rotation() {
        let old = KeyPair::generate().unwrap();
        let new = KeyPair::generate().unwrap();
        let old_service = TokenService::new("aud", &old, &[]).unwrap();
        let new_service =
            TokenService::new("aud", &new, &[(old.kid.clone(), old.public_pem.clone())]).unwrap();
        let id = BuildId::new();
        let t = old_service
            .issue(TokenType::Job, id, "building/x", Duration::from_secs(60))
            .unwrap();
        let ctx = new_service.verify(&t, TokenType::Job).unwrap();
        assert_eq!(ctx.build_id, id);
        assert_eq!(ctx.job_id, "building/x");
        let err = new_service.verify(&t, TokenType::Registration).unwrap_err();
        assert!(
            err.to_string().contains("a job token was presented"),
            "{err}"
        );
        let other = TokenService::new("other-aud", &new, &[]).unwrap();
        let t2 = new_service
            .issue(TokenType::Job, id, "building/x", Duration::from_secs(60))
            .unwrap();
        assert!(
            other
                .verify(&t2, TokenType::Job)
                .unwrap_err()
                .to_string()
                .contains("audience")
        );
        assert!(
            old_service
                .verify(&t2, TokenType::Job)
                .unwrap_err()
                .to_string()
                .contains("unknown key")
        );
    }
}
