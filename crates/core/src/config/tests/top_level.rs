//! The top-level keys Quay defines, Config as a whole and the environment overrides.

use std::time::Duration;

use super::{assert_cases, errors, load, manager, warnings};
use crate::config::{
    BuildManagerConfig, Config, ExecutorKind, ExecutorSpecific, Lifecycle, OrchestratorConfig,
    PopenConfig,
};

#[test]
fn every_error_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "a: [1, 2".into(),
            vec![
                "did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence at line 1 column 4",
            ],
        ),
        (
            "- a\n- b".into(),
            vec!["expected a mapping at the top level, got a list"],
        ),
        (
            "just text".into(),
            vec![r#"expected a mapping at the top level, got "just text""#],
        ),
        (
            "".into(),
            vec!["expected a mapping at the top level, got null"],
        ),
        (
            "FEATURE_BUILD_SUPPORT: yes".into(),
            vec![r#"FEATURE_BUILD_SUPPORT: expected a boolean, got "yes""#],
        ),
        (
            "FEATURE_BUILD_SUPPORT: [true]".into(),
            vec!["FEATURE_BUILD_SUPPORT: expected a boolean, got a list"],
        ),
        (
            "SERVER_HOSTNAME: {a: 1}".into(),
            vec!["SERVER_HOSTNAME: expected a string, got a mapping"],
        ),
        (
            "a: &x {b: 1}\nc: {<<: 5}".into(),
            vec!["expected a mapping or list of mappings for merging, but found scalar"],
        ),
    ];
    assert_cases(&cases, errors);
}

#[test]
fn every_warning_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![(
        "DB_URI: postgresql://x\nPREFERRED_URL_SCHEME: https\nFOO: 1".into(),
        vec![],
    )];
    assert_cases(&cases, warnings);
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = "FEATURE_BUILD_SUPPORT: maybe
BUILDMAN_HTTP_LISTEN: nope
BUILD_MANAGER:
- ephemeral
- ALLOWED_WORKER_COUNT: 0
  ORCHESTRATOR: {REDIS_HOST: h, MEM_X: 1}
  EXECUTORS:
  - {EXECUTOR: popen, SETUP_TIME: abc, FOO: 1}
  - {EXECUTOR: kubernetes, NAME: popen, STAGED_ROLLOUT: 2}
";
    assert_eq!(
        errors(yaml),
        vec![
            r#"FEATURE_BUILD_SUPPORT: expected a boolean, got "maybe""#,
            "BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: must be at least 1, got 0",
            "BUILD_MANAGER[1].ORCHESTRATOR: mixes REDIS_* and MEM_* keys; configure one orchestrator",
            r#"BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME: expected an integer, got "abc""#,
            "BUILD_MANAGER[1].EXECUTORS[1].STAGED_ROLLOUT: must be between 0 and 1, got 2",
            r#"BUILD_MANAGER[1].EXECUTORS[1].NAME: duplicate executor name "popen" (also used by EXECUTORS[0])"#,
            r#"BUILDMAN_HTTP_LISTEN: expected an address like 127.0.0.1:8080, got "nope""#,
        ]
    );
}

#[test]
fn defaults_without_build_manager_and_embedded() {
    let config = load("SERVER_HOSTNAME: quay.io").config;
    assert!(!config.feature_build_support, "Quay's default is off");
    assert_eq!(config.build_manager, BuildManagerConfig::default());
    let bm = &config.build_manager;
    assert_eq!(bm.lifecycle, Lifecycle::Ephemeral);
    assert_eq!(bm.allowed_worker_count, 1);
    assert_eq!(bm.orchestrator, OrchestratorConfig::Memory);
    assert_eq!(bm.job_registration_timeout, Duration::from_secs(30));
    let [popen] = bm.executors.as_slice() else {
        panic!("one default executor expected");
    };
    assert_eq!(
        (popen.kind, popen.name.as_str()),
        (ExecutorKind::Popen, "popen")
    );
    assert_eq!(popen.setup_time, Duration::from_secs(500));
    assert_eq!(
        popen.specific,
        ExecutorSpecific::Popen(PopenConfig {
            builder_binary_location: None,
            buildah_isolation: "chroot".into(),
            insecure: false,
        })
    );

    let embedded = Config::embedded();
    assert!(embedded.feature_build_support);
    assert_eq!(embedded.server_hostname, "localhost:8080");
    assert_eq!(
        embedded.controller_port, None,
        "no metrics listener of its own"
    );
    assert_eq!(embedded.build_manager, BuildManagerConfig::default());
    assert_eq!(
        Config {
            feature_build_support: true,
            ..load("{}").config
        },
        embedded
    );
    // An empty manager mapping, ORCHESTRATOR: {} and MEM_* keys all mean the defaults.
    for yaml in [
        "BUILD_MANAGER: [ephemeral]",
        "BUILD_MANAGER: [ephemeral, ]",
        "BUILD_MANAGER: [ephemeral, {ORCHESTRATOR: {}}]",
        "BUILD_MANAGER: [ephemeral, {ORCHESTRATOR: {MEM_CONFIG: 1}}]",
    ] {
        assert_eq!(
            load(yaml).config.build_manager,
            BuildManagerConfig::default(),
            "{yaml}"
        );
    }
}

#[test]
fn debug_never_shows_secrets() {
    let yaml = format!(
        "BUILDMAN_DATABASE_URL: postgres://u:xyzzy-db@h/d\n\
         BUILDMAN_API_TOKENS: [xyzzy-token-0123456789]\n{}",
        manager(
            "ORCHESTRATOR: {REDIS_HOST: h, REDIS_PASSWORD: xyzzy-redis}, EXECUTORS: [\
             {EXECUTOR: kubernetes, QUAY_PASSWORD: xyzzy-quay, SERVICE_ACCOUNT_TOKEN: xyzzy-sa}, \
             {EXECUTOR: ec2, EC2_REGION: r, COREOS_AMI: ami-1, AWS_ACCESS_KEY: k, \
             AWS_SECRET_KEY: xyzzy-aws}]"
        )
    );
    let config = load(&yaml).config;
    let debug = format!("{config:?}");
    assert!(!debug.contains("xyzzy"), "{debug}");
    assert!(debug.contains("password: Some(<redacted>)"), "{debug}");
    assert!(debug.contains("api_tokens: [<redacted>; 1]"), "{debug}");
    assert!(debug.contains("host: \"h\""), "{debug}");
    let pretty = format!("{config:#?}");
    assert!(!pretty.contains("xyzzy"), "{pretty}");
}

#[test]
fn worker_server_address_and_audience() {
    let with = |server: &str, manager: Option<&str>| Config {
        server_hostname: server.into(),
        buildman_hostname: manager.map(Into::into),
        ..Config::embedded()
    };
    let cases = [
        ("quay.example.com", None, None, "quay.example.com"),
        (
            "quay.example.com",
            Some("quay.example.com"),
            Some("quay.example.com:55443"),
            "quay.example.com",
        ),
        (
            "quay.example.com:8443",
            Some("QUAY.example.com:50051"),
            Some("QUAY.example.com:55443"),
            "QUAY.example.com:50051",
        ),
        (
            "quay.example.com",
            Some("buildman.example.com:8443"),
            Some("buildman.example.com:8443"),
            "buildman.example.com:8443",
        ),
        ("[::1]:8080", Some("[::1]"), Some("[::1]:55443"), "[::1]"),
    ];
    for (server, manager, address, audience) in cases {
        let config = with(server, manager);
        assert_eq!(
            config.worker_server_address().as_deref(),
            address,
            "{server} {manager:?}"
        );
        assert_eq!(config.token_audience(), audience);
    }
}

#[test]
fn environment_overrides() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |key: &str| {
            (vars.iter())
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let mut config = Config::embedded();
    config.apply_env(env(&[]));
    assert_eq!(config, Config::embedded());

    config.apply_env(env(&[
        ("BUILDMAN_HOSTNAME", "bm.example.com"),
        ("BUILDMAN_CONTROLLER_PORT", "9090"),
    ]));
    assert_eq!(config.buildman_hostname.as_deref(), Some("bm.example.com"));
    assert_eq!(config.controller_port, Some(9090));
    config.api_tokens = vec!["from-file".into()];
    config.apply_env(env(&[("BUILDMAN_API_TOKENS", "one, two,,")]));
    assert_eq!(config.api_tokens, ["from-file", "one", "two"]);
    let api: std::net::SocketAddr = "10.0.0.5:8080".parse().unwrap();
    assert_eq!(
        config.metrics_listen_address(api),
        Some("10.0.0.5:9090".parse().unwrap()),
        "the controller port, on the REST API's address"
    );
    config.metrics_listen = Some("0.0.0.0:9100".parse().unwrap());
    assert_eq!(
        config.metrics_listen_address(api),
        Some("0.0.0.0:9100".parse().unwrap()),
        "BUILDMAN_METRICS_LISTEN wins"
    );
    config.metrics_listen = None;

    let errors = config
        .try_apply_env(env(&[("BUILDMAN_CONTROLLER_PORT", "http")]))
        .err()
        .unwrap_or_default();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [r#"BUILDMAN_CONTROLLER_PORT: expected a port number, got "http""#]
    );
    assert_eq!(
        config.controller_port,
        Some(9090),
        "an invalid value is not applied"
    );
    config.apply_env(env(&[("BUILDMAN_HOSTNAME", "")]));
    assert_eq!(config.buildman_hostname.as_deref(), Some("bm.example.com"));
}
