#!/usr/bin/env python3
"""Known answers for crates/quay's DATABASE_SECRET_KEY handling, computed independently.

Writes secret_kat.json next to this file. Run with Python >= 3.11 and the `cryptography`
package (pip install cryptography); the committed JSON was made with Python 3.11.7 and
cryptography 48.0.0:

    python3 crates/quay/tests/data/secret_kat.py

`convert_secret_key` and the v0 field format below are Quay's (util/security/secret.py and
data/encryption.py, quay-integration.md section 8), copied so the answers do not depend on
the Rust code under test. Nonces are fixed here so the answers are reproducible; Quay draws
them from os.urandom.
"""

import base64
import itertools
import json
import os
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESCCM


def convert_secret_key(config_secret_key):
    secret_key = None
    try:
        big_int = int(config_secret_key)
        secret_key = bytearray.fromhex("{:02x}".format(big_int))
    except ValueError:
        pass
    if secret_key is None:
        try:
            secret_key = uuid.UUID(config_secret_key).bytes
        except ValueError:
            pass
    if secret_key is None:
        secret_key = bytearray(list(map(ord, config_secret_key)))
    assert len(secret_key) > 0
    return b"".join(itertools.islice(itertools.cycle([bytes([b]) for b in secret_key]), 32))


def encrypt_v0(key, nonce, plaintext):
    ct = AESCCM(key, tag_length=16).encrypt(nonce, plaintext.encode("utf-8"), None)
    return "v0$$" + base64.b64encode(nonce + ct).decode("ascii")


# A 256-bit value whose hex has 64 digits (the common case of Quay's generator) and one whose
# hex has 63 (about one in 16: the decimal string's ASCII is used instead).
EVEN = str(int("c0ffee" + "11" * 29, 16))
ODD = str(int("c0ffee" + "11" * 28 + "1", 16))
assert len("{:02x}".format(int(EVEN))) == 64 and len("{:02x}".format(int(ODD))) == 63

KEYS = {
    "decimal, 64 hex digits": EVEN,
    "decimal, 63 hex digits (odd)": ODD,
    "decimal, 66 hex digits (truncated)": str(int("ab" * 33, 16)),
    "small decimal, one byte cycled": "5",
    "zero": "0",
    "whitespace, sign and underscores": " \t+4_660\n",
    "Unicode whitespace and digits": "\u3000\u0664\u0666\u0666\u0660\u00a0",
    "0x1c and 0x1f are not whitespace to int()": "\x1c4660\x1f",
    "odd hex length": "1000000",
    "negative zero": "-0",
    "4301 digits exceed Python's int() limit": "1" * 4301,
    "4300 digits and underscores": "9_" * 4299 + "9",
    "negative decimal": "-4660",
    "double underscore is not an int": "1__0",
    "trailing underscore is not an int": "10_",
    "hyphenated UUID": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "UUID, 32 hex digits": "0F1E2D3C4B5A69788796A5B4C3D2E1F0",
    "UUID in braces": "{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}",
    "UUID URN": "urn:uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "UUID with 0x prefix (Python's int accepts it)": "0x1e2d3c4b5a69788796a5b4c3d2e1f0",
    "31 hex digits is not a UUID": "0f1e2d3c4b5a69788796a5b4c3d2e1f",
    "UUID with sign, spaces, doubled braces and inner prefixes": "{{ +1e2d3c4b-5a69-uuid:7887-96a5b4c3d2e1f0}}",
    "UUID with Arabic-Indic digits": "\u0660f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "Latin-1 text": "caf\u00e9 secret",
    "long text (truncated)": "the quick brown fox jumps over the lazy dog",
}

NONCE = bytes(range(1, 14))
PLAINTEXTS = {
    "access-token code": "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
    "empty": "",
    "multi-line UTF-8": "-----BEGIN RSA PRIVATE KEY-----\nk\u00e9y \u2603\n-----END RSA PRIVATE KEY-----\n",
}

out = {"keys": [], "fields": []}
for name, s in KEYS.items():
    out["keys"].append({"name": name, "config": s, "key_hex": convert_secret_key(s).hex()})
for key_name in ("decimal, 64 hex digits", "decimal, 63 hex digits (odd)", "hyphenated UUID"):
    key = convert_secret_key(KEYS[key_name])
    for name, plaintext in PLAINTEXTS.items():
        out["fields"].append({
            "key_config": KEYS[key_name],
            "nonce_hex": NONCE.hex(),
            "plaintext": plaintext,
            "stored": encrypt_v0(key, NONCE, plaintext),
        })

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "secret_kat.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=True)
    f.write("\n")
