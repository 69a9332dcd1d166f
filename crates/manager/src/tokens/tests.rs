//! The token service: rotation, the verification cache, ring's signatures checked by
//! another RSA implementation.

use super::*;

#[test]
fn remembered_verifications_keep_kind_and_lifetime() {
    let pair = KeyPair::generate().unwrap();
    let service = TokenService::new("aud", &pair, &[]).unwrap();
    let id = BuildId::new();
    let token = service
        .issue(
            TokenType::Job,
            id,
            "building/x",
            "claim",
            Duration::from_secs(60),
        )
        .unwrap();
    let first = service.verify(&token, TokenType::Job).unwrap();
    let until = service.verify_signed(&token, TokenType::Job).unwrap().1;
    // The second answer comes from memory and is the same.
    assert_eq!(service.verify(&token, TokenType::Job).unwrap(), first);
    // Memory never answers for another kind of token.
    let err = service.verify(&token, TokenType::Registration).unwrap_err();
    assert!(
        err.to_string().contains("a job token was presented"),
        "{err}"
    );
    // Nor past the token's validity.
    let hash = sha256(&token);
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
fn ring_signed_tokens_have_the_rs256_form() {
    let pair = KeyPair::generate().unwrap();
    let service = TokenService::new("aud", &pair, &[]).unwrap();
    let token = service
        .issue(
            TokenType::Job,
            BuildId::new(),
            "building/x",
            "claim",
            Duration::from_secs(60),
        )
        .unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some(pair.kid.as_str()));
    // The signature checks with another RSA implementation than the one that made it.
    {
        use base64::Engine;
        use rsa::pkcs8::DecodePublicKey;
        use sha2::Digest;
        let public = rsa::RsaPublicKey::from_public_key_pem(&pair.public_pem).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        public
            .verify(
                rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                &sha2::Sha256::digest(message.as_bytes()),
                &signature,
            )
            .expect("ring's RS256 signature verifies with the rsa crate");
    }
    // And the claims read back with the public key alone.
    let key = DecodingKey::from_rsa_pem(pair.public_pem.as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["aud"]);
    let data = jsonwebtoken::decode::<Claims>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims.iss, ISSUER);
    assert_eq!(data.claims.context.job_key, "building/x");
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
        .issue(
            TokenType::Job,
            id,
            "building/x",
            "claim",
            Duration::from_secs(60),
        )
        .unwrap();
    let ctx = new_service.verify(&t, TokenType::Job).unwrap();
    assert_eq!(ctx.build_id, id);
    assert_eq!(ctx.job_key, "building/x");
    let err = new_service.verify(&t, TokenType::Registration).unwrap_err();
    assert!(
        err.to_string().contains("a job token was presented"),
        "{err}"
    );
    let other = TokenService::new("other-aud", &new, &[]).unwrap();
    let t2 = new_service
        .issue(
            TokenType::Job,
            id,
            "building/x",
            "claim",
            Duration::from_secs(60),
        )
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
