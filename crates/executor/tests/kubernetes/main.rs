//! The Kubernetes executors against a fake API server (crates/testkit's `kube`): the Jobs
//! they write (checked by `kubernetes-validate` and field by field), how they authenticate,
//! the API's errors, stopping, counting and listing workers, and the failures their watch
//! reports.

mod api;
mod auth;
mod manifest;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use buildman_core::BuildId;
use buildman_core::config::{Config, ExecutorConfig};
use buildman_executor::StartRequest;
use buildman_executor::kubernetes::{KubernetesExecutor, KubernetesSettings};

/// The registration token handed to workers in these tests; it must never show up in an
/// error.
pub const TOKEN: &str = "registration-token-SECRET-0123456789";

/// The executor of a config whose only executor is `entry` (YAML keys, one per line,
/// without indentation).
pub fn executor_config(entry: &str) -> ExecutorConfig {
    let indented: String = entry.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!(
        "FEATURE_BUILD_SUPPORT: true\nBUILD_MANAGER:\n- ephemeral\n- EXECUTORS:\n  -\n{indented}"
    );
    let loaded = Config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
    loaded.config.build_manager.executors[0].clone()
}

pub fn settings(entry: &str) -> KubernetesSettings {
    KubernetesSettings::new(&executor_config(entry), Path::new("."), None).expect("settings")
}

pub fn request() -> StartRequest {
    StartRequest {
        build_id: BuildId::new(),
        token: TOKEN.into(),
        server: "buildman.example.com:55443".into(),
        registry_hostname: "quay.example.com".into(),
        insecure: false,
        max_lifetime_s: 10800,
        manager_id: "4b6f1d7e-8a35-4c1b-9d11-2f0e8c6a7b90".into(),
    }
}

/// An executor over `entry`, started (its watch running when `watch` is true).
pub async fn executor(entry: &str) -> KubernetesExecutor {
    buildman_testkit::tls_provider();
    KubernetesExecutor::new(settings(entry))
        .await
        .expect("executor")
}

/// Test certificates made with the openssl command: a CA, a server certificate it signed
/// for 127.0.0.1, a client certificate it signed, a self-signed server certificate, and a
/// second CA that signed nothing here.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (Debian package openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = ["-nodes", "-newkey", "rsa:2048", "-days", "1"];
        for (name, cn) in [("ca", "fake kube CA"), ("other-ca", "another CA")] {
            let (k, c) = (format!("{name}.key"), format!("{name}.pem"));
            let mut args = vec!["req", "-x509", "-subj"];
            let subject = format!("/CN={cn}");
            args.push(&subject);
            args.extend(key);
            args.extend(["-keyout", &k, "-out", &c]);
            run(&args);
        }
        let leaf = |name: &str, cn: &str, ext: &str| {
            let (k, r, c, e) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(dir.path().join(&e), ext).expect("ext");
            let subject = format!("/CN={cn}");
            run(&[
                "req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj", &subject, "-keyout", &k,
                "-out", &r,
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &r,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &e,
                "-out",
                &c,
            ]);
        };
        leaf(
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
        );
        leaf(
            "client",
            "buildman",
            "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        run(&[
            "req",
            "-x509",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
        ]);
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn server(&self, client_ca: bool) -> buildman_testkit::kube::TlsFiles {
        buildman_testkit::kube::TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.then(|| self.path("ca.pem")),
        }
    }
}

/// Polls `check` until it holds; panics after 20 s.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
