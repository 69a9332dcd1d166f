//! Checks shared by the executor tests: the Ignition validator and reading its files back.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::process::Command;

/// Validates an Ignition document with an independent validator: Python's `jsonschema`
/// against a strict schema of Ignition 3.4.0 (tests/data), as `.ci/run` installs it.
pub fn validate(document: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.ign");
    std::fs::write(&path, document).expect("write");
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ignition-3.4-subset.schema.json"
    );
    let script = "import json, sys, jsonschema\n\
                  schema = json.load(open(sys.argv[1]))\n\
                  jsonschema.validate(json.load(open(sys.argv[2])), schema)\n";
    let out = Command::new("python3")
        .args(["-c", script, schema])
        .arg(&path)
        .output()
        .expect("python3 runs (install it and `pip install jsonschema`)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The text of an Ignition file's `data:,` URL (percent-encoded).
pub fn data_url_text(url: &str) -> String {
    let body = url.strip_prefix("data:,").expect("a data URL");
    let mut out = Vec::new();
    let mut bytes = body.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next().expect("hex"), bytes.next().expect("hex")];
            let hex = std::str::from_utf8(&hex).expect("hex");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).expect("UTF-8")
}
