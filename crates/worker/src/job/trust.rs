//! The certificates the worker trusts for its manager, from quay-builder's environment:
//! TLS_CERT_PATH names a PEM bundle; Quay's kubernetesPodman executor also passes the bundle
//! itself as CA_CERT and points TLS_CERT_PATH, SSL_CERT_FILE and GIT_SSL_CAINFO at
//! `/certs/cacert.crt`, which quay-builder's image writes before the worker starts. This
//! worker writes it itself when it is missing — CA_CERT followed by the system's roots, as
//! that image does, so git, buildah and podman (which read SSL_CERT_FILE / GIT_SSL_CAINFO
//! instead of the system store) still trust public registries — and then trusts that file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Where distributions keep their bundle of public roots.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The PEM bundle the worker trusts for its manager, if any: the file TLS_CERT_PATH names
/// (written from CA_CERT first when missing), else CA_CERT itself.
pub(super) fn manager_ca(
    ca_cert: Option<String>,
    tls_cert_path: Option<String>,
) -> Result<Option<Vec<u8>>, String> {
    match (ca_cert, tls_cert_path) {
        (None, None) => Ok(None),
        (Some(pem), None) => Ok(Some(pem.into_bytes())),
        (ca, Some(path)) => {
            let file = Path::new(&path);
            if let Some(pem) = ca
                && !file.exists()
            {
                write_bundle(file, &pem)
                    .map_err(|e| format!("CA_CERT: writing the bundle to TLS_CERT_PATH {path}: {e}; make its directory writable or mount the bundle there"))?;
            }
            std::fs::read(file)
                .map(Some)
                .map_err(|e| format!("TLS_CERT_PATH {path}: {e}"))
        }
    }
}

/// Writes `pem` and the system's roots to `file` (readable by all: certificates only).
fn write_bundle(file: &Path, pem: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bundle = pem.trim_end().to_string();
    bundle.push('\n');
    if let Some(system) = SYSTEM_BUNDLES
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
    {
        bundle.push_str(&system);
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(file)?;
    out.write_all(bundle.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    #[test]
    fn ca_cert_is_written_to_tls_cert_path_and_trusted_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs/cacert.crt");
        let trusted = manager_ca(Some(PEM.into()), Some(path.display().to_string()))
            .unwrap()
            .unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(trusted, written.as_bytes());
        assert!(written.starts_with(PEM), "{written}");
    }

    #[test]
    fn a_bundle_already_there_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cacert.crt");
        std::fs::write(&path, "mounted bundle").unwrap();
        let trusted = manager_ca(Some(PEM.into()), Some(path.display().to_string())).unwrap();
        assert_eq!(trusted.unwrap(), b"mounted bundle");
    }

    #[test]
    fn without_a_path_ca_cert_is_trusted_as_given_and_an_unwritable_path_is_named() {
        assert_eq!(
            manager_ca(Some(PEM.into()), None).unwrap().unwrap(),
            PEM.as_bytes()
        );
        assert_eq!(manager_ca(None, None).unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("cacert.crt").display().to_string();
        let e = manager_ca(Some(PEM.into()), Some(path.clone())).unwrap_err();
        assert!(e.contains(&path) && e.contains("CA_CERT"), "{e}");
    }
}
