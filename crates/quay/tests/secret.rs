//! Quay's `DATABASE_SECRET_KEY` handling against answers computed by Python's
//! `cryptography` with Quay's own derivation (tests/data/secret_kat.py).

use buildman_quay::secret::{DecryptError, FieldCipher, NONCE_LEN, SecretKeyError, derive_key};
use serde::Deserialize;

#[derive(Deserialize)]
struct Answers {
    keys: Vec<KeyAnswer>,
    fields: Vec<FieldAnswer>,
}

#[derive(Deserialize)]
struct KeyAnswer {
    name: String,
    config: String,
    key_hex: String,
}

#[derive(Deserialize)]
struct FieldAnswer {
    key_config: String,
    nonce_hex: String,
    plaintext: String,
    stored: String,
}

fn answers() -> Answers {
    serde_json::from_str(include_str!("data/secret_kat.json")).expect("secret_kat.json")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cipher(config: &str) -> FieldCipher {
    FieldCipher::from_config(config).expect("a usable key")
}

#[test]
fn keys_are_derived_as_quay_derives_them() {
    let answers = answers();
    assert!(answers.keys.len() >= 20);
    let wrong: Vec<String> = answers
        .keys
        .iter()
        .filter_map(|k| {
            let got = derive_key(&k.config).map(|key| hex(&key));
            (got.as_ref() != Ok(&k.key_hex)).then(|| format!("{}: got {got:?}", k.name))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "keys that differ from Quay's:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn an_odd_length_hex_key_uses_the_decimal_strings_bytes() {
    let answers = answers();
    let odd = answers
        .keys
        .iter()
        .find(|k| k.name.contains("63 hex digits"))
        .expect("the odd case");
    let key = derive_key(&odd.config).expect("a key");
    assert_eq!(&key[..], &odd.config.as_bytes()[..32]);
}

#[test]
fn values_quay_encrypted_decrypt() {
    for field in answers().fields {
        let got = cipher(&field.key_config).decrypt(&field.stored);
        assert_eq!(
            got.as_deref(),
            Ok(field.plaintext.as_str()),
            "{}",
            field.stored
        );
    }
}

#[test]
fn encryption_matches_quays_byte_for_byte() {
    for field in answers().fields {
        let nonce: Vec<u8> = (0..NONCE_LEN)
            .map(|i| u8::from_str_radix(&field.nonce_hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("13 bytes");
        let stored = cipher(&field.key_config).encrypt_with_nonce(&field.plaintext, &nonce);
        assert_eq!(stored.as_deref(), Ok(field.stored.as_str()));
    }
}

#[test]
fn a_token_code_is_stored_in_88_characters_and_round_trips() {
    let c = cipher("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
    let code = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let first = c.encrypt(code).expect("short");
    let second = c.encrypt(code).expect("short");
    assert_eq!(first.len(), 88);
    assert_ne!(first, second, "each value gets a fresh nonce");
    assert_eq!(c.decrypt(&first).as_deref(), Ok(code));
}

#[test]
fn a_wrong_key_is_refused_without_showing_a_secret() {
    let answers = answers();
    let field = &answers.fields[0];
    let err = cipher("some other key").decrypt(&field.stored).unwrap_err();
    assert_eq!(err, DecryptError::WrongKey);
    let text = err.to_string();
    assert!(text.contains("DATABASE_SECRET_KEY"), "{text}");
    for secret in [&field.plaintext, &field.key_config, &field.stored] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    assert_eq!(format!("{:?}", cipher("k")), "FieldCipher { .. }");
}

#[test]
fn malformed_values_are_refused_clearly() {
    let c = cipher("k");
    let refused = |stored: &str| c.decrypt(stored).unwrap_err();
    assert_eq!(refused("plain text"), DecryptError::NotEncrypted);
    assert_eq!(
        refused("v1$$AAAA"),
        DecryptError::UnknownVersion("v1".into())
    );
    assert_eq!(
        refused("a long secret-looking thing$$AAAA"),
        DecryptError::UnknownVersion("(unreadable)".into())
    );
    assert!(matches!(
        refused("v0$$not base64!"),
        DecryptError::Corrupt(_)
    ));
    assert!(matches!(refused("v0$$AAAA"), DecryptError::Corrupt(_)));
    // A flipped bit in the tag.
    let mut stored = c.encrypt("x").expect("short").into_bytes();
    let last = stored.len() - 3;
    stored[last] = if stored[last] == b'A' { b'B' } else { b'A' };
    let stored = String::from_utf8(stored).expect("ascii");
    assert_eq!(refused(&stored), DecryptError::WrongKey);
}

#[test]
fn keys_quay_cannot_use_are_refused() {
    assert_eq!(derive_key(""), Err(SecretKeyError::Empty));
    assert_eq!(
        derive_key("key \u{2603}"),
        Err(SecretKeyError::NotLatin1 { position: 5 })
    );
    let long = "x".repeat(65_536);
    assert!(cipher("k").encrypt(&long).is_err());
}
