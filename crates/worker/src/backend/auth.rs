//! Registry credentials on disk instead of on command lines: a throwaway 0700 dir holding a
//! 0600 `auth.json` (containers tools, `--authfile`) or `config.json` (docker, `DOCKER_CONFIG`),
//! removed when dropped. Also the bits of image-reference parsing the backends need.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{BackendError, Credentials};

/// Docker Hub's name as containers tools key it in auth.json.
const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's key in the docker CLI's config.json (a historical URL the CLI still uses).
const DOCKER_HUB_CLI_KEY: &str = "https://index.docker.io/v1/";

/// A temp dir with one credentials file; both are deleted on drop.
pub(crate) struct AuthDir {
    /// Owns (and on drop deletes) the directory.
    dir: tempfile::TempDir,
    /// The credentials file inside it.
    file: PathBuf,
}

impl AuthDir {
    /// Writes `{"auths":{HOST:{"auth":base64(user:password)}}}` as `file_name` in a new temp
    /// dir; `docker_cli` keys Docker Hub the way the docker CLI looks it up.
    pub(crate) fn write<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a Credentials)>,
        file_name: &str,
        docker_cli: bool,
    ) -> Result<Self, BackendError> {
        let mut auths = serde_json::Map::new();
        for (host, creds) in entries {
            let key = if docker_cli && host == DOCKER_HUB {
                DOCKER_HUB_CLI_KEY
            } else {
                host
            };
            let token = STANDARD.encode(format!("{}:{}", creds.username, creds.password));
            auths.insert(key.to_string(), serde_json::json!({ "auth": token }));
        }
        let body = serde_json::json!({ "auths": auths }).to_string();
        // Dir 0700 (tempfile's default would be 0755), file 0600 from its creation on.
        let dir = tempfile::Builder::new()
            .prefix("buildman-auth-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| BackendError::io("creating a temp dir for registry credentials", e))?;
        let file = dir.path().join(file_name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| f.write_all(body.as_bytes()))
            .map_err(|e| BackendError::io("writing registry credentials", e))?;
        Ok(Self { dir, file })
    }

    /// The credentials file (for `--authfile`).
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The directory (for `DOCKER_CONFIG`).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The registry host of an image reference, the way docker normalises names: the first
/// path component if it has a `.` or `:` or is `localhost`, else Docker Hub.
pub(crate) fn registry_host(image: &str) -> &str {
    let image = image.strip_prefix("docker://").unwrap_or(image);
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => DOCKER_HUB,
    }
}

/// The reference without its `:tag` and `@digest` (buildah's `--cache-from` wants a bare
/// repository). A `:` before the last `/` is a registry port, not a tag.
pub(crate) fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].find(':') {
        Some(i) => &image[..name_start + i],
        None => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(registry_host("quay.io/ns/repo:tag"), "quay.io");
        assert_eq!(registry_host("127.0.0.1:5000/base"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/x"), "localhost");
        assert_eq!(registry_host("library/alpine"), "docker.io");
        assert_eq!(registry_host("alpine:3"), "docker.io");
        assert_eq!(registry_host("docker://quay.io/a/b"), "quay.io");
    }

    #[test]
    fn repositories() {
        assert_eq!(
            repository("127.0.0.1:5000/ns/repo:v1"),
            "127.0.0.1:5000/ns/repo"
        );
        assert_eq!(
            repository("127.0.0.1:5000/ns/repo"),
            "127.0.0.1:5000/ns/repo"
        );
        assert_eq!(repository("quay.io/a/b@sha256:abc"), "quay.io/a/b");
        assert_eq!(repository("quay.io/a/b:t@sha256:abc"), "quay.io/a/b");
        assert_eq!(repository("alpine:3"), "alpine");
    }

    #[test]
    fn auth_file_is_private_and_goes_away() {
        let creds = Credentials::token("s3cret");
        let auth = AuthDir::write(
            [("quay.io", &creds), ("docker.io", &creds)],
            "config.json",
            true,
        )
        .unwrap();
        let file = auth.file().to_path_buf();
        assert_eq!(file.parent(), Some(auth.dir()));
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(auth.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let expected = STANDARD.encode("$token:s3cret");
        assert_eq!(json["auths"]["quay.io"]["auth"], expected.as_str());
        assert_eq!(json["auths"][DOCKER_HUB_CLI_KEY]["auth"], expected.as_str());
        drop(auth);
        assert!(!file.exists());
    }
}
