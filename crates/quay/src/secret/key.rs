//! The 32-byte AES key Quay derives from its `DATABASE_SECRET_KEY` (quay-integration.md
//! section 8.2; Quay's `convert_secret_key`): the config string as a Python `int()`, else
//! as a Python `uuid.UUID()`, else its Latin-1 bytes, repeated to 32 bytes.
//!
//! Quay's key is whatever its Python derives, quirks included, so the Python parsing rules
//! are followed exactly, as of Python 3.11 (the known answers in tests/data/secret_kat.py were
//! computed with it): `int()` strips Unicode whitespace, takes a sign, single underscores
//! between digits, any Unicode decimal digit, and refuses more than 4,300 digits.

use num_bigint::BigUint;

/// The length of an AES-256 key.
pub const KEY_LEN: usize = 32;

/// Python's limit on the digits `int()` converts from a decimal string (3.11 and later;
/// `sys.int_info.default_max_str_digits`). Longer strings are not integers to Quay.
const PYTHON_MAX_STR_DIGITS: usize = 4300;

/// The first code point of each run of ten Unicode decimal digits (category Nd) in Unicode
/// 14.0, Python 3.11's database, whose `int()` reads them all. Made with
/// `[c for c in range(0x110000) if unicodedata.category(chr(c)) == 'Nd'
/// and unicodedata.decimal(chr(c)) == 0]`.
const DECIMAL_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66,
    0xde6, 0xe50, 0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90,
    0x1b50, 0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10,
    0x104a0, 0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650,
    0x116c0, 0x11730, 0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50,
    0x1d7ce, 0x1d7d8, 0x1d7e2, 0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0,
];

/// Why a `DATABASE_SECRET_KEY` gives no key. Never holds the key or any part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretKeyError {
    /// The key is empty (Quay fails an assertion on it).
    #[error("DATABASE_SECRET_KEY is empty: set it to the value Quay's web tier uses")]
    Empty,
    /// Neither an integer nor a UUID, and a character does not fit one byte: Quay fails
    /// to derive a key from it too.
    #[error(
        "DATABASE_SECRET_KEY: character {position} is outside Latin-1, so Quay derives no key \
         from this value either; set it to the value Quay's web tier uses"
    )]
    NotLatin1 {
        /// Its position (from 1) in the value, counted in characters.
        position: usize,
    },
}

/// Derives Quay's AES-256 key from the configured `DATABASE_SECRET_KEY`.
pub fn derive_key(config: &str) -> Result<[u8; KEY_LEN], SecretKeyError> {
    let raw = as_integer(config)
        .or_else(|| as_uuid(config))
        .map_or_else(|| latin1(config), Ok)?;
    if raw.is_empty() {
        return Err(SecretKeyError::Empty);
    }
    let mut key = [0u8; KEY_LEN];
    for (k, b) in key.iter_mut().zip(raw.iter().cycle()) {
        *k = *b;
    }
    Ok(key)
}

/// Step 1: `bytearray.fromhex("{:02x}".format(int(s)))`. `None` when `int()` refuses, the
/// value is negative (`-` is no hex digit) or its hex has an odd number of digits.
fn as_integer(s: &str) -> Option<Vec<u8>> {
    let value = python_int(s, 10)?;
    let hex_digits = value.bits().div_ceil(4).max(2);
    (hex_digits % 2 == 0).then(|| value.to_bytes_be())
}

/// Step 2: Python's `uuid.UUID(s).bytes`: `urn:` and `uuid:` removed anywhere, braces
/// stripped from both ends, hyphens removed, then exactly 32 characters that `int(_, 16)`
/// reads.
fn as_uuid(s: &str) -> Option<Vec<u8>> {
    let s = s.replace("urn:", "").replace("uuid:", "");
    let s = s.trim_matches(['{', '}']).replace('-', "");
    if s.chars().count() != 32 {
        return None;
    }
    let bytes = python_int(&s, 16)?.to_bytes_be();
    // 32 characters hold at most 32 hex digits, so the value fits 16 bytes.
    let mut out = vec![0u8; 16usize.checked_sub(bytes.len())?];
    out.extend(bytes);
    Some(out)
}

/// Step 3: each character's code point as one byte.
fn latin1(s: &str) -> Result<Vec<u8>, SecretKeyError> {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            u8::try_from(u32::from(c)).map_err(|_| SecretKeyError::NotLatin1 { position: i + 1 })
        })
        .collect()
}

/// Python's `int(s, radix)` for radix 10 or 16, when it is not negative (a negative value
/// has no use here: it falls through in both steps). `None` where Python raises.
fn python_int(s: &str, radix: u32) -> Option<BigUint> {
    let s = s.trim_matches(char::is_whitespace);
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    // With base 16 Python takes an optional `0x`, and an underscore right after it.
    let mut underscore_ok = false;
    if radix == 16
        && let Some(r) = rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X"))
    {
        rest = r;
        underscore_ok = true;
    }
    let mut digits = Vec::with_capacity(rest.len());
    let mut after_underscore = false;
    for c in rest.chars() {
        if c == '_' {
            if !underscore_ok {
                return None;
            }
            underscore_ok = false;
            after_underscore = true;
            continue;
        }
        digits.push(digit_value(c, radix)?);
        underscore_ok = true;
        after_underscore = false;
    }
    if digits.is_empty() || after_underscore {
        return None;
    }
    if radix == 10 && digits.len() > PYTHON_MAX_STR_DIGITS {
        return None;
    }
    let value = BigUint::from_radix_be(&digits, radix)?;
    (!negative || value.bits() == 0).then_some(value)
}

/// A digit's value: any Unicode decimal digit; for radix 16 also ASCII letters a to f.
fn digit_value(c: char, radix: u32) -> Option<u8> {
    if let Some(d) = c.to_digit(radix) {
        return u8::try_from(d).ok();
    }
    let code = u32::from(c);
    DECIMAL_ZEROS
        .iter()
        .find(|zero| (**zero..**zero + 10).contains(&code))
        .and_then(|zero| u8::try_from(code - zero).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_int_follows_pythons_grammar() {
        let int = |s: &str, r| python_int(s, r).map(|v| v.to_string());
        assert_eq!(int("  +1_2\n", 10).as_deref(), Some("12"));
        assert_eq!(int("0x_ff", 16).as_deref(), Some("255"));
        assert_eq!(int("-0", 10).as_deref(), Some("0"));
        for bad in ["", "_1", "1_", "1__2", "- 1", "+", "0x", "1 2", "-5"] {
            assert_eq!(int(bad, 10), None, "{bad:?}");
        }
        assert_eq!(int("0x_", 16), None);
        assert_eq!(int("ff", 10), None);
    }

    #[test]
    fn errors_never_show_the_key() {
        let err = derive_key("s3cr\u{263a}t").unwrap_err();
        assert_eq!(err, SecretKeyError::NotLatin1 { position: 5 });
        assert!(!err.to_string().contains("s3cr"));
        assert_eq!(derive_key(""), Err(SecretKeyError::Empty));
    }
}
