//! The Ignition (Fedora CoreOS) document a worker machine boots with: the `kubernetes`
//! executor hands it to its VM image as `USERDATA`, the `ec2` executor as user data. It is
//! built from typed structures and serialised with serde, in Ignition spec 3.4.0, and says:
//!
//! - the `core` user may log in with SSH_AUTHORIZED_KEYS;
//! - the CA bundle (CA_CERT and any extra certificates) is a system trust anchor and the
//!   container runtime's `certs.d/<registry>/ca.crt`;
//! - a unit runs WORKER_IMAGE:WORKER_TAG with CONTAINER_RUNTIME (podman or docker), after
//!   logging in with QUAY_USERNAME/QUAY_PASSWORD when set; the worker's environment
//!   (TOKEN, SERVER, the proxies, ...) is a file only root can read, not the unit's text;
//! - a timer powers the machine off after MAX_LIFETIME_S, whatever the worker does.
//!
//! The document holds secrets (the registration token, the registry password): never log
//! it or put it in an error.

use buildman_core::config::ExecutorConfig;
use serde::Serialize;

use crate::StartRequest;

/// The Ignition spec version written.
pub const VERSION: &str = "3.4.0";
/// The worker image when WORKER_IMAGE is not set.
pub const DEFAULT_WORKER_IMAGE: &str = "quay.io/projectquay/quay-builder";
/// The worker image's tag when WORKER_TAG is not set.
pub const DEFAULT_WORKER_TAG: &str = "latest";

/// Where the worker's environment file lives on the machine.
const ENV_FILE: &str = "/etc/buildman/worker.env";
/// Where the CA bundle becomes a trust anchor (Fedora CoreOS).
const TRUST_ANCHOR: &str = "/etc/pki/ca-trust/source/anchors/buildman-ca.crt";

/// What a worker machine needs to know.
#[derive(Clone)]
pub struct WorkerMachine {
    /// WORKER_IMAGE (without tag).
    pub image: String,
    /// WORKER_TAG.
    pub tag: String,
    /// CONTAINER_RUNTIME: `podman` (default) or `docker`.
    pub runtime: String,
    /// QUAY_USERNAME / QUAY_PASSWORD, to pull the worker image.
    pub image_login: Option<(String, String)>,
    /// The worker's environment: TOKEN, SERVER, BUILD_UUID, REGISTRY_HOSTNAME, proxies, ...
    pub env: Vec<(String, String)>,
    /// The registry host builds push to, for the runtime's `certs.d`; "" for none.
    pub registry: String,
    /// PEM certificates the machine and the runtime trust, concatenated; "" for none.
    pub ca_bundle: String,
    /// SSH_AUTHORIZED_KEYS for the `core` user.
    pub ssh_authorized_keys: Vec<String>,
    /// MAX_LIFETIME_S: the machine powers off this long after boot.
    pub max_lifetime_s: u64,
}

impl std::fmt::Debug for WorkerMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMachine")
            .field("image", &self.image)
            .field("tag", &self.tag)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// An Ignition config (the parts this document uses).
#[derive(Serialize)]
pub struct Config {
    ignition: Ignition,
    passwd: Passwd,
    storage: Storage,
    systemd: Systemd,
}

#[derive(Serialize)]
struct Ignition {
    version: &'static str,
}

#[derive(Serialize)]
struct Passwd {
    users: Vec<User>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct User {
    name: &'static str,
    ssh_authorized_keys: Vec<String>,
}

#[derive(Serialize)]
struct Storage {
    files: Vec<File>,
}

#[derive(Serialize)]
struct File {
    path: String,
    mode: u32,
    overwrite: bool,
    contents: Contents,
}

#[derive(Serialize)]
struct Contents {
    source: String,
}

#[derive(Serialize)]
struct Systemd {
    units: Vec<Unit>,
}

#[derive(Serialize)]
struct Unit {
    name: &'static str,
    enabled: bool,
    contents: String,
}

impl File {
    fn new(path: impl Into<String>, mode: u32, data: &str) -> File {
        File {
            path: path.into(),
            mode,
            overwrite: true,
            contents: Contents {
                source: data_url(data),
            },
        }
    }
}

/// `data` as an RFC 2397 data URL, percent-encoded as Ignition reads it.
fn data_url(data: &str) -> String {
    let mut url = String::from("data:,");
    for byte in data.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                url.push(char::from(byte))
            }
            _ => url.push_str(&format!("%{byte:02X}")),
        }
    }
    url
}

/// One `KEY=value` line of a systemd environment file; values are quoted so spaces and
/// quotes survive.
fn env_line(name: &str, value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("{name}=\"{escaped}\"\n")
}

impl WorkerMachine {
    /// The machine of one job, from its executor's common keys: the worker gets
    /// quay-builder's environment (TOKEN, SERVER, BUILD_UUID, REGISTRY_HOSTNAME, INSECURE,
    /// CONTAINER_RUNTIME, DEBUG and the proxies).
    pub fn for_job(config: &ExecutorConfig, request: &StartRequest) -> WorkerMachine {
        let mut env: Vec<(String, String)> = vec![
            ("TOKEN".into(), request.token.clone()),
            ("SERVER".into(), request.server.clone()),
            ("BUILD_UUID".into(), request.build_id.to_string()),
        ];
        let mut set = |name: &str, value: Option<&str>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                env.push((name.into(), value.into()));
            }
        };
        set("REGISTRY_HOSTNAME", Some(&request.registry_hostname));
        set("INSECURE", request.insecure.then_some("true"));
        set("CONTAINER_RUNTIME", config.container_runtime.as_deref());
        set("DEBUG", config.debug.then_some("true"));
        set("HTTP_PROXY", config.http_proxy.as_deref());
        set("HTTPS_PROXY", config.https_proxy.as_deref());
        set("NO_PROXY", config.no_proxy.as_deref());
        WorkerMachine {
            image: (config.worker_image.as_deref())
                .unwrap_or(DEFAULT_WORKER_IMAGE)
                .to_owned(),
            tag: (config.worker_tag.as_deref())
                .unwrap_or(DEFAULT_WORKER_TAG)
                .to_owned(),
            runtime: match config.container_runtime.as_deref() {
                Some("docker") => "docker".to_owned(),
                _ => "podman".to_owned(),
            },
            image_login: config
                .quay_username
                .clone()
                .zip(config.quay_password.clone()),
            env,
            registry: request.registry_hostname.clone(),
            ca_bundle: config.ca_cert.clone().unwrap_or_default(),
            ssh_authorized_keys: config.ssh_authorized_keys.clone(),
            max_lifetime_s: request.max_lifetime_s,
        }
    }

    /// The Ignition config of this machine.
    pub fn ignition(&self) -> Config {
        let mut files = vec![File::new(ENV_FILE, 0o600, &self.env_file())];
        if !self.ca_bundle.is_empty() {
            files.push(File::new(TRUST_ANCHOR, 0o644, &self.ca_bundle));
            if !self.registry.is_empty() {
                let certs_d = match self.runtime.as_str() {
                    "docker" => "/etc/docker/certs.d",
                    _ => "/etc/containers/certs.d",
                };
                let path = format!("{certs_d}/{}/ca.crt", self.registry);
                files.push(File::new(path, 0o644, &self.ca_bundle));
            }
        }
        Config {
            ignition: Ignition { version: VERSION },
            passwd: Passwd {
                users: vec![User {
                    name: "core",
                    ssh_authorized_keys: self.ssh_authorized_keys.clone(),
                }],
            },
            storage: Storage { files },
            systemd: Systemd {
                units: vec![
                    Unit {
                        name: "buildman-worker.service",
                        enabled: true,
                        contents: self.worker_unit(),
                    },
                    Unit {
                        name: "buildman-poweroff.timer",
                        enabled: true,
                        contents: self.poweroff_timer(),
                    },
                    Unit {
                        name: "buildman-poweroff.service",
                        enabled: false,
                        contents: POWEROFF_SERVICE.to_string(),
                    },
                ],
            },
        }
    }

    /// The Ignition config as JSON.
    pub fn to_json(&self) -> String {
        // A tree of strings, numbers and booleans always serialises.
        serde_json::to_string(&self.ignition()).unwrap_or_default()
    }

    fn env_file(&self) -> String {
        self.env.iter().map(|(k, v)| env_line(k, v)).collect()
    }

    fn runtime(&self) -> &str {
        if self.runtime == "docker" {
            "/usr/bin/docker"
        } else {
            "/usr/bin/podman"
        }
    }

    /// The unit that runs the worker container once, then powers the machine off.
    fn worker_unit(&self) -> String {
        let runtime = self.runtime();
        let image = format!("{}:{}", self.image, self.tag);
        let login = match &self.image_login {
            Some(_) => format!(
                "ExecStartPre={runtime} login --username ${{QUAY_USERNAME}} --password ${{QUAY_PASSWORD}} {}\n",
                registry_of(&self.image)
            ),
            None => String::new(),
        };
        let login_env = match &self.image_login {
            Some((user, password)) => format!(
                "Environment={}Environment={}",
                env_line("QUAY_USERNAME", user),
                env_line("QUAY_PASSWORD", password)
            ),
            None => String::new(),
        };
        format!(
            "[Unit]\nDescription=buildman worker\nWants=network-online.target\n\
             After=network-online.target\n\n[Service]\nType=oneshot\nTimeoutStartSec=0\n\
             {login_env}{login}\
             ExecStartPre=-{runtime} pull {image}\n\
             ExecStart={runtime} run --rm --privileged --net=host --env-file {ENV_FILE} \
             -v /etc/pki/ca-trust/source/anchors:/etc/pki/ca-trust/source/anchors:ro \
             --name buildman-worker {image}\n\
             ExecStopPost=/usr/bin/systemctl --no-block poweroff\n\n\
             [Install]\nWantedBy=multi-user.target\n"
        )
    }

    /// The timer that powers the machine off after MAX_LIFETIME_S.
    fn poweroff_timer(&self) -> String {
        format!(
            "[Unit]\nDescription=power off after MAX_LIFETIME_S\n\n[Timer]\n\
             OnBootSec={}s\nUnit=buildman-poweroff.service\n\n[Install]\nWantedBy=timers.target\n",
            self.max_lifetime_s
        )
    }
}

const POWEROFF_SERVICE: &str = "[Unit]\nDescription=power off the worker machine\n\n[Service]\nType=oneshot\n\
     ExecStart=/usr/bin/systemctl --no-block poweroff\n";

/// The registry host of an image reference (`quay.io/org/builder` → `quay.io`); Docker
/// Hub's when the first component is no host.
fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> WorkerMachine {
        WorkerMachine {
            image: "quay.io/projectquay/quay-builder".into(),
            tag: "v3.15".into(),
            runtime: "podman".into(),
            image_login: Some(("robot".into(), "s3cret".into())),
            env: vec![
                ("TOKEN".into(), "the-token".into()),
                ("SERVER".into(), "buildman.example.com:55443".into()),
            ],
            registry: "quay.example.com".into(),
            ca_bundle: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA core@example".into()],
            max_lifetime_s: 10800,
        }
    }

    /// Decodes a data URL written by [`data_url`].
    fn decode(url: &str) -> String {
        let body = url.strip_prefix("data:,").expect("a data URL");
        let mut out = Vec::new();
        let mut bytes = body.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hex: String = [bytes.next().unwrap(), bytes.next().unwrap()]
                    .iter()
                    .map(|&c| char::from(c))
                    .collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            } else {
                out.push(b);
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_document_says_what_the_machine_needs() {
        let json: serde_json::Value = serde_json::from_str(&machine().to_json()).unwrap();
        assert_eq!(json["ignition"]["version"], VERSION);
        assert_eq!(json["passwd"]["users"][0]["name"], "core");
        assert_eq!(
            json["passwd"]["users"][0]["sshAuthorizedKeys"][0],
            "ssh-ed25519 AAAA core@example"
        );
        let files = json["storage"]["files"].as_array().unwrap();
        let file = |path: &str| {
            let f = files
                .iter()
                .find(|f| f["path"] == path)
                .unwrap_or_else(|| panic!("{path}"));
            (
                f["mode"].as_u64().unwrap(),
                decode(f["contents"]["source"].as_str().unwrap()),
            )
        };
        let (mode, env) = file(ENV_FILE);
        assert_eq!(mode, 0o600, "the environment holds the token: root only");
        assert!(env.contains("TOKEN=\"the-token\"\n"), "{env}");
        assert!(
            env.contains("SERVER=\"buildman.example.com:55443\"\n"),
            "{env}"
        );
        assert!(file(TRUST_ANCHOR).1.contains("BEGIN CERTIFICATE"));
        file("/etc/containers/certs.d/quay.example.com/ca.crt");
        let units = json["systemd"]["units"].as_array().unwrap();
        let unit = |name: &str| {
            units.iter().find(|u| u["name"] == name).unwrap()["contents"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let worker = unit("buildman-worker.service");
        assert!(worker.contains("/usr/bin/podman run"), "{worker}");
        assert!(
            worker.contains("quay.io/projectquay/quay-builder:v3.15"),
            "{worker}"
        );
        assert!(
            worker.contains("login --username ${QUAY_USERNAME}"),
            "{worker}"
        );
        assert!(
            worker.contains(" quay.io\n"),
            "logs in to the image's registry: {worker}"
        );
        assert!(
            !worker.contains("the-token"),
            "the token is not in the unit's text"
        );
        assert!(unit("buildman-poweroff.timer").contains("OnBootSec=10800s"));
    }

    #[test]
    fn docker_and_no_extras() {
        let mut m = machine();
        m.runtime = "docker".into();
        m.image_login = None;
        m.ca_bundle.clear();
        let json: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        let files = json["storage"]["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "only the environment file");
        let worker = json["systemd"]["units"][0]["contents"].as_str().unwrap();
        assert!(worker.contains("/usr/bin/docker run"));
        assert!(!worker.contains("login"));
    }

    #[test]
    fn a_jobs_machine_from_the_executors_keys() {
        use buildman_core::BuildId;
        use buildman_core::config::{ExecutorConfig, ExecutorKind};

        let request = StartRequest {
            build_id: BuildId::new(),
            token: "tok".into(),
            server: "manager:55443".into(),
            registry_hostname: "registry.test".into(),
            insecure: true,
            max_lifetime_s: 600,
            manager_id: "manager-a".into(),
        };
        let defaults = ExecutorConfig::with_defaults(ExecutorKind::Ec2);
        let m = WorkerMachine::for_job(&defaults, &request);
        assert_eq!(
            (m.image.as_str(), m.tag.as_str(), m.runtime.as_str()),
            (DEFAULT_WORKER_IMAGE, DEFAULT_WORKER_TAG, "podman")
        );
        assert!(m.image_login.is_none());
        assert_eq!(m.max_lifetime_s, 600);
        let env: Vec<(&str, &str)> = (m.env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let build = request.build_id.to_string();
        assert_eq!(
            env,
            [
                ("TOKEN", "tok"),
                ("SERVER", "manager:55443"),
                ("BUILD_UUID", build.as_str()),
                ("REGISTRY_HOSTNAME", "registry.test"),
                ("INSECURE", "true"),
            ]
        );

        let config = ExecutorConfig {
            worker_image: Some("quay.example.com/builder".into()),
            worker_tag: Some("v1".into()),
            container_runtime: Some("docker".into()),
            quay_username: Some("robot".into()),
            quay_password: Some("pw".into()),
            https_proxy: Some("http://proxy:3128".into()),
            ca_cert: Some("PEM".into()),
            ..defaults
        };
        let m = WorkerMachine::for_job(&config, &request);
        assert_eq!(m.image, "quay.example.com/builder");
        assert_eq!(m.tag, "v1");
        assert_eq!(m.runtime, "docker");
        assert_eq!(m.image_login, Some(("robot".into(), "pw".into())));
        assert_eq!(m.ca_bundle, "PEM");
        assert!(
            m.env
                .contains(&("CONTAINER_RUNTIME".into(), "docker".into()))
        );
        assert!(
            m.env
                .contains(&("HTTPS_PROXY".into(), "http://proxy:3128".into()))
        );
    }

    #[test]
    fn registry_of_an_image() {
        assert_eq!(registry_of("quay.io/org/builder"), "quay.io");
        assert_eq!(registry_of("localhost:5000/b"), "localhost:5000");
        assert_eq!(registry_of("org/builder"), "docker.io");
        assert_eq!(registry_of("builder"), "docker.io");
    }
}
