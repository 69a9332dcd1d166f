//! The tokens workers present: RS256 JWTs with a `kid`, in the claims layout of Quay's
//! build manager (see the worker protocol's "Tokens" section).
//!
//! Several public keys can be trusted at once, so a signing key can be rotated without
//! invalidating the tokens of workers already running. jsonwebtoken handles the JWT, ring
//! the RSA ([`ring`]); the `rsa` crate only generates and converts keys ([`keys`]).

mod keys;
mod ring;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use buildman_core::BuildId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use keys::KeyPair;

/// The issuer written into every token.
pub const ISSUER: &str = "buildman";
/// Clock skew tolerated between manager and worker, as in Quay.
const LEEWAY_S: u64 = 30;

/// What is wrong with a token or a key.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token was missing, malformed, forged, expired or of the wrong kind; the text
    /// says which, for the worker's operator, and never echoes the token.
    #[error("{0}")]
    Refused(String),
    /// A configured or generated key cannot be used.
    #[error("{0}")]
    Key(String),
    /// Signing failed.
    #[error("signing a token: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

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
    /// The orchestrator key of the job (the claim is `job_id` on the wire, as in Quay).
    #[serde(rename = "job_id")]
    pub job_key: String,
    /// The attempt (the queue claim's `state_id`) the token is for: it is accepted only
    /// while that attempt's job is live. `None` in tokens of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
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

/// Issues and verifies worker tokens.
pub struct TokenService {
    audience: String,
    kid: String,
    signing: EncodingKey,
    trusted: HashMap<String, DecodingKey>,
    /// Job tokens verified before: every call and stream message of a job carries its
    /// token, and a signature check costs more than everything else a heartbeat does.
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

fn sha256(token: &str) -> [u8; 32] {
    let digest = ::ring::digest::digest(&::ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl TokenService {
    /// Signs with `signing`; verifies tokens signed by it or by any of `trusted`
    /// (`(kid, public key PEM)` pairs).
    pub fn new(
        audience: impl Into<String>,
        signing: &KeyPair,
        trusted: &[(String, String)],
    ) -> Result<Self, TokenError> {
        ring::install();
        let bad = |kid: &str, e: jsonwebtoken::errors::Error| {
            TokenError::Key(format!("key {kid:?} is not a usable RSA key: {e}"))
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
        let service = TokenService {
            audience: audience.into(),
            kid: signing.kid.clone(),
            signing: EncodingKey::from_rsa_pem(signing.private_pem.as_bytes())
                .map_err(|e| bad(&signing.kid, e))?,
            trusted: keys,
            verified: Mutex::default(),
        };
        // A key ring refuses (under 2048 bits, say) fails here, at start, not on first use.
        service
            .issue(
                TokenType::Job,
                BuildId::new(),
                "probe",
                "probe",
                Duration::from_secs(1),
            )
            .map_err(|e| TokenError::Key(format!("signing key {:?}: {e}", signing.kid)))?;
        Ok(service)
    }

    /// A signed token of `token_type` for a job's `attempt`, valid for `lifetime`.
    pub fn issue(
        &self,
        token_type: TokenType,
        build_id: BuildId,
        job_key: &str,
        attempt: &str,
        lifetime: Duration,
    ) -> Result<String, TokenError> {
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
                job_key: job_key.to_string(),
                attempt: Some(attempt.to_string()),
                expiration: lifetime.as_secs(),
            },
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing).map_err(TokenError::Signing)
    }

    /// Checks signature, audience, issuer, time and kind; returns the token's context.
    /// A job token verified before is answered from memory until it expires.
    pub fn verify(&self, token: &str, expected: TokenType) -> Result<TokenContext, TokenError> {
        if expected == TokenType::Registration {
            // Presented once: nothing to gain from remembering it.
            return self.verify_signed(token, expected).map(|(c, _)| c);
        }
        let hash = sha256(token);
        let now = unix_now();
        let lock = || self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((context, _)) = lock().get(&hash, expected, now) {
            return Ok(context);
        }
        let (context, valid_until) = self.verify_signed(token, expected)?;
        lock().insert(hash, context.clone(), valid_until, now);
        Ok(context)
    }

    /// The full check: signature, claims, time and kind; also until when (unix seconds,
    /// clock skew included) the token stays valid.
    fn verify_signed(
        &self,
        token: &str,
        expected: TokenType,
    ) -> Result<(TokenContext, u64), TokenError> {
        let refused = |m: String| TokenError::Refused(m);
        if token.is_empty() {
            return Err(refused(
                "no token: the request carries an empty job_jwt".into(),
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format!("malformed token: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(refused(format!(
                "token algorithm {:?} is not RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| refused("token has no kid header naming its signing key".into()))?;
        let key = self
            .trusted
            .get(&kid)
            .ok_or_else(|| refused(format!("token signed by unknown key {kid:?}")))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            refused(match e.kind() {
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
            return Err(refused(format!(
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
mod tests;
