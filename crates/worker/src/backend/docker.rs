//! The docker CLI against a docker engine (DOCKER_HOST). Untested here: this machine has no
//! engine, so this is kept minimal and follows the CLI's documented behaviour:
//!
//! - Credentials go into a throwaway `DOCKER_CONFIG` dir whose `config.json` holds the
//!   `auths` entries directly; that is what `docker login` would write, without needing the
//!   engine for the login or putting the password anywhere but a 0600 file.
//! - `DOCKER_BUILDKIT=0` keeps the classic builder, whose `Step N/M : X` lines the manager's
//!   log matcher expects; BuildKit prints `#5 [2/3] RUN ...` instead. (The classic builder
//!   is deprecated upstream but still works with a warning.)
//! - TLS verification is the engine's business (`insecure-registries` in daemon.json;
//!   127.0.0.0/8 is insecure by default), so `insecure` is not passed on.
//! - Export uses `docker save`, which writes an OCI layout (index.json, oci-layout, blobs/)
//!   inside its tar from Docker 25 on; older engines write only the legacy layout, and
//!   export fails saying so.

use std::path::Path;

use tokio::process::Command;

use super::auth::{AuthDir, registry_host};
use super::process::run;
use super::{Backend, BackendConfig, BackendError, BuildRequest, Credentials, LineSink, Tool};

/// The credentials file name inside `DOCKER_CONFIG`.
const CONFIG_FILE: &str = "config.json";

/// A docker CLI backend.
#[derive(Debug, Clone)]
pub struct DockerBackend {
    /// Program and DOCKER_HOST.
    config: BackendConfig,
}

impl DockerBackend {
    /// A backend running `config.program` (default `docker`) against `config.docker_host`.
    pub fn new(config: BackendConfig) -> Self {
        Self { config }
    }

    /// `docker <sub>` with DOCKER_HOST and, when given, DOCKER_CONFIG set.
    fn command(&self, sub: &str, auth: Option<&AuthDir>) -> Command {
        let mut cmd = match &self.config.program {
            Some(p) => Command::new(p),
            None => Command::new("docker"),
        };
        if let Some(host) = &self.config.docker_host {
            cmd.env("DOCKER_HOST", host);
        }
        if let Some(auth) = auth {
            cmd.env("DOCKER_CONFIG", auth.dir());
        }
        cmd.arg(sub);
        cmd
    }
}

/// A DOCKER_CONFIG dir with `creds` for the registry of `image`, if there are credentials.
fn auth_for(image: &str, creds: Option<&Credentials>) -> Result<Option<AuthDir>, BackendError> {
    creds
        .map(|c| AuthDir::write([(registry_host(image), c)], CONFIG_FILE, true))
        .transpose()
}

/// The engine's text for a missing image ("Error: No such image: x" / "No such image").
fn is_no_such_image(err: &BackendError) -> bool {
    matches!(err, BackendError::Failed { tail, .. }
        if tail.iter().any(|l| l.to_ascii_lowercase().contains("no such image")))
}

#[async_trait::async_trait]
impl Backend for DockerBackend {
    fn tool(&self) -> Tool {
        Tool::Docker
    }

    async fn pull(
        &self,
        image: &str,
        creds: Option<&Credentials>,
        _insecure: bool,
        out: &LineSink,
    ) -> Result<(), BackendError> {
        let auth = auth_for(image, creds)?;
        let mut cmd = self.command("pull", auth.as_ref());
        cmd.arg(image);
        let secrets: Vec<&str> = creds.map(|c| c.password.as_str()).into_iter().collect();
        run(cmd, "docker pull", Some(out), &secrets).await
    }

    async fn build(&self, req: &BuildRequest, out: &LineSink) -> Result<String, BackendError> {
        if req.tag.is_empty() {
            return Err(BackendError::Invalid("empty build tag".into()));
        }
        // The CLI sends every configured auth to the engine with the build, for FROM pulls.
        let auth = if req.registry_creds.is_empty() {
            None
        } else {
            let entries = req.registry_creds.iter().map(|(h, c)| (h.as_str(), c));
            Some(AuthDir::write(entries, CONFIG_FILE, true)?)
        };
        let iid_dir = tempfile::Builder::new()
            .prefix("buildman-iid-")
            .tempdir()
            .map_err(|e| BackendError::io("creating a temp dir for the image id", e))?;
        let iid_file = iid_dir.path().join("iid");
        let mut cmd = self.command("build", auth.as_ref());
        cmd.env("DOCKER_BUILDKIT", "0");
        cmd.arg("--iidfile").arg(&iid_file);
        // The classic builder takes any local image here; the worker pulls it beforehand.
        if let Some(cache) = req.cache_from.as_deref().filter(|s| !s.is_empty()) {
            cmd.arg("--cache-from").arg(cache);
        }
        for (name, value) in &req.build_args {
            cmd.arg("--build-arg").arg(format!("{name}={value}"));
        }
        cmd.arg("-f").arg(&req.dockerfile);
        cmd.arg("-t").arg(&req.tag);
        cmd.arg(&req.context_dir);
        let secrets: Vec<&str> = req
            .registry_creds
            .values()
            .map(|c| c.password.as_str())
            .collect();
        run(cmd, "docker build", Some(out), &secrets).await?;
        let id = std::fs::read_to_string(&iid_file)
            .map_err(|e| BackendError::io("reading the built image's id", e))?;
        Ok(id.trim().to_string())
    }

    async fn push(
        &self,
        image: &str,
        destination: &str,
        creds: Option<&Credentials>,
        _insecure: bool,
        out: &LineSink,
    ) -> Result<(), BackendError> {
        let destination = destination.strip_prefix("docker://").unwrap_or(destination);
        // docker pushes names, not images: tag first, untag afterwards whatever happened.
        let mut tag = self.command("tag", None);
        tag.arg(image).arg(destination);
        run(tag, "docker tag", Some(out), &[]).await?;
        let auth = auth_for(destination, creds)?;
        let mut cmd = self.command("push", auth.as_ref());
        cmd.arg(destination);
        let secrets: Vec<&str> = creds.map(|c| c.password.as_str()).into_iter().collect();
        let pushed = run(cmd, "docker push", Some(out), &secrets).await;
        let mut untag = self.command("rmi", None);
        untag.arg(destination);
        // Only a stray tag would be left; the push's own outcome is what matters.
        let _ = run(untag, "docker rmi", None, &[]).await;
        pushed
    }

    async fn export_oci(
        &self,
        image: &str,
        dir: &Path,
        tag: &str,
        out: &LineSink,
    ) -> Result<(), BackendError> {
        let work = tempfile::Builder::new()
            .prefix("buildman-save-")
            .tempdir()
            .map_err(|e| BackendError::io("creating a temp dir for docker save", e))?;
        let archive = work.path().join("image.tar");
        let mut cmd = self.command("save", None);
        cmd.arg("-o").arg(&archive).arg(image);
        run(cmd, "docker save", Some(out), &[]).await?;
        let dir = dir.to_path_buf();
        let tag = tag.to_string();
        tokio::task::spawn_blocking(move || unpack_oci(&archive, &dir, &tag))
            .await
            .map_err(|e| {
                BackendError::io("unpacking docker save output", std::io::Error::other(e))
            })?
    }

    async fn remove(&self, image: &str) -> Result<(), BackendError> {
        let mut cmd = self.command("rmi", None);
        cmd.arg("-f").arg(image);
        match run(cmd, "docker rmi", None, &[]).await {
            Err(e) if is_no_such_image(&e) => Ok(()),
            other => other,
        }
    }
}

/// Unpacks a `docker save` tar into `dir` and names its manifests `tag` in index.json,
/// keeping the entries for other tags already in `dir` (one layout can hold many tags, as
/// `buildah push IMAGE oci:DIR:TAG` does).
fn unpack_oci(archive: &Path, dir: &Path, tag: &str) -> Result<(), BackendError> {
    let index_path = dir.join("index.json");
    let earlier: Vec<serde_json::Value> = match std::fs::read_to_string(&index_path) {
        Ok(text) => parse_index(&text)?["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| ref_name(m) != Some(tag))
            .collect(),
        Err(_) => Vec::new(),
    };
    let file = std::fs::File::open(archive)
        .map_err(|e| BackendError::io("opening docker save output", e))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| BackendError::io(format!("creating {}", dir.display()), e))?;
    tar::Archive::new(file)
        .unpack(dir)
        .map_err(|e| BackendError::io("unpacking docker save output", e))?;
    let text = std::fs::read_to_string(&index_path).map_err(|e| {
        BackendError::io(
            "docker save wrote no OCI layout (needs Docker 25 or later)",
            e,
        )
    })?;
    let mut index = parse_index(&text)?;
    let mut manifests = earlier;
    for mut manifest in index["manifests"].as_array().cloned().unwrap_or_default() {
        if let Some(obj) = manifest.as_object_mut() {
            let annotations = obj
                .entry("annotations")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(a) = annotations.as_object_mut() {
                a.insert("org.opencontainers.image.ref.name".into(), tag.into());
            }
        }
        manifests.push(manifest);
    }
    index["manifests"] = serde_json::Value::Array(manifests);
    std::fs::write(&index_path, index.to_string())
        .map_err(|e| BackendError::io("writing index.json", e))
}

/// index.json as JSON.
fn parse_index(text: &str) -> Result<serde_json::Value, BackendError> {
    serde_json::from_str(text)
        .map_err(|e| BackendError::io("parsing index.json", std::io::Error::other(e)))
}

/// A manifest entry's `org.opencontainers.image.ref.name`.
fn ref_name(manifest: &serde_json::Value) -> Option<&str> {
    manifest["annotations"]["org.opencontainers.image.ref.name"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar like `docker save` (25+) writes, for one image.
    fn save_tar(dir: &Path, digest: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{digest}.tar"));
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": 1,
             "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
        for (name, body) in [
            (
                "oci-layout",
                r#"{"imageLayoutVersion":"1.0.0"}"#.to_string(),
            ),
            ("index.json", index.to_string()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, name, body.as_bytes())
                .unwrap();
        }
        builder.finish().unwrap();
        path
    }

    #[test]
    fn docker_save_output_becomes_a_layout_with_every_tag() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        unpack_oci(&save_tar(tmp.path(), "sha256:aa"), &layout, "v1").unwrap();
        unpack_oci(&save_tar(tmp.path(), "sha256:bb"), &layout, "v2").unwrap();
        unpack_oci(&save_tar(tmp.path(), "sha256:cc"), &layout, "v1").unwrap();
        let index =
            parse_index(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
        let entries: Vec<(&str, &str)> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["digest"].as_str().unwrap(), ref_name(m).unwrap()))
            .collect();
        assert_eq!(entries, [("sha256:bb", "v2"), ("sha256:cc", "v1")]);
        assert!(layout.join("oci-layout").exists());
    }

    #[test]
    fn legacy_docker_save_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("legacy.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "manifest.json", &b"[]"[..])
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        let err = unpack_oci(&path, &tmp.path().join("out"), "v1").unwrap_err();
        assert!(err.to_string().contains("Docker 25"), "{err}");
    }
}
