//! Test certificates made with the openssl command (Debian package openssl).

use std::path::PathBuf;

/// Test certificates made with the openssl command: a CA, a server certificate it signed
/// for 127.0.0.1, a client certificate it signed, a self-signed server certificate, and a
/// second CA that signed nothing here.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    /// Makes them in a new temporary directory.
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

    /// The file `name` (`ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`,
    /// `self.pem`/`.key`, `other-ca.pem`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA-signed server certificate for a fake API server, which also checks client
    /// certificates against the CA when `client_ca`.
    pub fn server(&self, client_ca: bool) -> crate::kube::TlsFiles {
        crate::kube::TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.then(|| self.path("ca.pem")),
        }
    }
}
