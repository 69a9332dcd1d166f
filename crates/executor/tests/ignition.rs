//! The Ignition document checked by an independent validator: Python's `jsonschema`
//! against a strict schema of Ignition 3.4.0 (tests/data), as `.ci/run` installs it.

mod support;

use buildman_executor::ignition::WorkerMachine;
use support::validate;

fn machine(runtime: &str, login: bool, ca: bool) -> WorkerMachine {
    WorkerMachine {
        image: "quay.io/projectquay/quay-builder".into(),
        tag: "latest".into(),
        runtime: runtime.into(),
        image_login: login.then(|| ("robot".into(), "pw".into())),
        env: vec![
            ("TOKEN".into(), "t".into()),
            ("SERVER".into(), "manager:55443".into()),
        ],
        registry: "quay.example.com".into(),
        ca_bundle: if ca {
            "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n".into()
        } else {
            String::new()
        },
        ssh_authorized_keys: vec!["ssh-ed25519 AAAA a@b".into()],
        max_lifetime_s: 10800,
    }
}

#[test]
fn every_variant_is_valid_ignition() {
    for runtime in ["podman", "docker"] {
        for login in [false, true] {
            for ca in [false, true] {
                let document = machine(runtime, login, ca).to_json();
                validate(&document).unwrap_or_else(|e| {
                    panic!("{runtime} login={login} ca={ca}: not valid Ignition: {e}")
                });
            }
        }
    }
}

#[test]
fn the_validator_refuses_what_ignition_would_not_read() {
    let mut bad: serde_json::Value =
        serde_json::from_str(&machine("podman", false, false).to_json()).unwrap();
    bad["ignition"]["version"] = "2.2.0".into();
    assert!(
        validate(&bad.to_string()).is_err(),
        "a v2 version is refused"
    );
    let mut bad: serde_json::Value =
        serde_json::from_str(&machine("podman", false, false).to_json()).unwrap();
    bad["systemd"]["units"][0]["contnets"] = "typo".into();
    assert!(
        validate(&bad.to_string()).is_err(),
        "a misspelt field is refused"
    );
}
