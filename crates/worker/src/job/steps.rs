//! The phases of a job: unpacking, pulling (the base images, then the cached tag), building,
//! pushing. Every command's output reaches the manager through a spool in the work dir
//! ([`crate::output`]), so no command ever waits for the log stream.

use std::path::Path;

use buildman_proto as pb;
use pb::build_pack::BuildPack as Package;

use super::{Failure, WorkerEnv, summary};
use crate::backend::{self, Backend, BuildRequest, Credentials, LineSink};
use crate::context::{self, Prepared, Source};
use crate::output::{self, Chunk, LineSource};
use crate::session::{Logger, Session};

/// What one job works with.
pub(super) struct Job<'a> {
    pub pack: &'a pb::BuildPack,
    pub env: &'a WorkerEnv,
    pub backend: &'a dyn Backend,
    /// The work dir: the context, and spool files of output waiting for the manager.
    pub work: &'a Path,
    /// The local name the image is built as.
    pub image: &'a str,
}

impl Job<'_> {
    /// Every phase up to a pushed image; `complete` is the caller's to report.
    pub async fn build(&self, session: &mut Session) -> Result<(), Failure> {
        session.set_phase(pb::Phase::Unpacking, None).await?;
        let prepared = self.unpack().await?;
        let dockerfile = std::fs::read_to_string(&prepared.dockerfile)
            .map_err(|e| Failure::Build(format!("reading the Dockerfile: {e}")))?;
        backend::check_dockerfile(&dockerfile)
            .map_err(|e| Failure::Build(format!("Dockerfile {e}")))?;
        let bases = backend::from_lines(&dockerfile);
        let insecure_pulls = self.pull_bases(session, &bases).await?;
        let cache_from = self.prime_cache(session, &bases).await?;

        session.set_phase(pb::Phase::Building, None).await?;
        let request = self.request(&prepared, &bases, cache_from, insecure_pulls);
        let logger = session.logger("building");
        let (built, step) = self
            .with_output(&logger, async |out| self.backend.build(&request, out).await)
            .await;
        built.map_err(|e| {
            Failure::Build(summary::failed(step.as_deref().unwrap_or("the build"), &e))
        })?;

        session.set_phase(pb::Phase::Pushing, None).await?;
        let logger = session.logger("pushing");
        self.with_output(&logger, async |out| self.push(out).await)
            .await
            .0
    }

    /// Runs `step` with a sink whose output reaches `logger` as it comes; returns once the
    /// step ended and all its output was handed to the session, with the last Dockerfile
    /// step line the output held.
    async fn with_output<T>(
        &self,
        logger: &Logger,
        step: impl AsyncFnOnce(&LineSink) -> T,
    ) -> (T, Option<String>) {
        let (sink, source) = output::spool(self.work);
        let run = async move {
            let result = step(&sink).await;
            drop(sink);
            result
        };
        tokio::join!(run, forward(logger, source))
    }

    async fn unpack(&self) -> Result<Prepared, Failure> {
        let pack = self.pack;
        let source = match &pack.build_pack {
            Some(Package::PackageUrl(url)) => Source::Url(url.clone()),
            Some(Package::GitPackage(g)) => Source::Git {
                url: g.url.clone(),
                sha: g.sha.clone(),
                private_key: Some(g.private_key.clone()).filter(|k| !k.is_empty()),
            },
            None => {
                return Err(Failure::Build(
                    "the build pack names neither a package URL nor a git repository".into(),
                ));
            }
        };
        let limits = &self.env.limits;
        context::prepare(
            &source,
            &pack.context,
            &pack.dockerfile_path,
            self.work,
            limits,
        )
        .await
        .map_err(|e| Failure::Build(e.to_string()))
    }

    /// The credentials the job names for its base images, if any.
    fn base_creds(&self) -> Option<Credentials> {
        self.pack
            .base_image
            .as_ref()
            .filter(|b| !b.username.is_empty())
            .map(|b| Credentials::new(b.username.clone(), b.password.clone()))
    }

    /// Pulls each base image, with its pull metadata; true when one came from a loopback
    /// (plain http) registry.
    async fn pull_bases(&self, session: &mut Session, bases: &[String]) -> Result<bool, Failure> {
        let pack = self.pack;
        let base_creds = self.base_creds();
        let logger = session.logger("pulling");
        let mut insecure_pulls = false;
        if bases.is_empty() {
            session.set_phase(pb::Phase::Pulling, None).await?;
        }
        for base in bases {
            let (registry, repo, tag) = split_image(base);
            let insecure = is_loopback_registry(&registry);
            insecure_pulls |= insecure;
            let meta = pb::set_phase_request::PullMetadata {
                registry_url: registry.clone(),
                base_image: repo,
                base_image_tag: tag,
                pull_username: base_creds
                    .as_ref()
                    .map(|c| c.username.clone())
                    .unwrap_or_default(),
            };
            session.set_phase(pb::Phase::Pulling, Some(meta)).await?;
            // A base image on the job's own registry is pulled with Quay's pull token.
            let creds = if registry == pack.registry && !pack.pull_token.is_empty() {
                Some(Credentials::token(pack.pull_token.clone()))
            } else {
                base_creds.clone()
            };
            let (pulled, _) = self
                .with_output(&logger, async |out| {
                    self.backend.pull(base, creds.as_ref(), insecure, out).await
                })
                .await;
            pulled.map_err(|e| {
                Failure::Build(summary::failed(&format!("pulling base image {base}"), &e))
            })?;
        }
        Ok(insecure_pulls)
    }

    /// Pulling again, for the cache: the manager names a tag of this repository to prime the
    /// build cache from, or none. A failed pull only means no cache.
    async fn prime_cache(
        &self,
        session: &mut Session,
        bases: &[String],
    ) -> Result<Option<String>, Failure> {
        let pack = self.pack;
        let (_, first_repo, first_tag) = bases.first().map(|b| split_image(b)).unwrap_or_default();
        let cached = session.cached_tag(&first_repo, &first_tag).await?;
        if cached.is_empty() || pack.registry.is_empty() {
            return Ok(None);
        }
        session.set_phase(pb::Phase::Pulling, None).await?;
        let cached_image = format!("{}/{}:{cached}", pack.registry, pack.repository);
        let pull_creds = Credentials::token(pack.pull_token.clone());
        let insecure = is_loopback_registry(&pack.registry);
        let logger = session.logger("pulling");
        let (primed, _) = self
            .with_output(&logger, async |out| {
                let creds = Some(&pull_creds);
                self.backend.pull(&cached_image, creds, insecure, out).await
            })
            .await;
        match primed {
            Ok(()) => Ok(Some(cached_image)),
            Err(e) => {
                logger
                    .line(&format!("cache not primed ({cached_image}): {e}"))
                    .await;
                Ok(None)
            }
        }
    }

    /// The build request: the context, proxies as build args, registry credentials.
    fn request(
        &self,
        prepared: &Prepared,
        bases: &[String],
        cache_from: Option<String>,
        insecure_registries: bool,
    ) -> BuildRequest {
        let pack = self.pack;
        let mut request = BuildRequest {
            context_dir: prepared.context_dir.clone(),
            dockerfile: prepared.dockerfile.clone(),
            tag: self.image.to_string(),
            cache_from,
            insecure_registries,
            ..Default::default()
        };
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"] {
            if let Ok(v) = std::env::var(var) {
                request.build_args.push((var.to_string(), v));
            }
        }
        if !pack.registry.is_empty() && !pack.pull_token.is_empty() {
            // Cache lookups in the job's own repository use Quay's pull token.
            request.registry_creds.insert(
                pack.registry.clone(),
                Credentials::token(pack.pull_token.clone()),
            );
        }
        if let (Some(creds), Some(base)) = (self.base_creds(), bases.first()) {
            request.registry_creds.insert(split_image(base).0, creds);
        }
        request
    }

    /// Pushes every tag, or writes them to an OCI layout when the job names no registry.
    async fn push(&self, out: &LineSink) -> Result<(), Failure> {
        let (pack, backend, image) = (self.pack, self.backend, self.image);
        let tags = if pack.tag_names.is_empty() {
            vec!["latest".to_string()]
        } else {
            pack.tag_names.clone()
        };
        if !pack.registry.is_empty() {
            let creds = Credentials::token(pack.push_token.clone());
            let insecure = is_loopback_registry(&pack.registry);
            for tag in &tags {
                let destination = format!("{}/{}:{tag}", pack.registry, pack.repository);
                backend
                    .push(image, &destination, Some(&creds), insecure, out)
                    .await
                    .map_err(|e| {
                        Failure::Build(summary::failed(&format!("pushing {destination}"), &e))
                    })?;
            }
            return Ok(());
        }
        let Some(dir) = &self.env.output_dir else {
            return Err(Failure::Build(
                "the job names no registry to push to, and BUILDMAN_OUTPUT_DIR is not set".into(),
            ));
        };
        let layout = dir.join(&pack.repository);
        let failed = |e: &dyn std::fmt::Display| {
            Failure::Build(format!("writing the OCI layout {}: {e}", layout.display()))
        };
        std::fs::create_dir_all(&layout).map_err(|e| failed(&e))?;
        for tag in &tags {
            backend
                .export_oci(image, &layout, tag, out)
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(())
    }
}

/// Hands a command's output to the manager's log as it comes. A message buildah glued onto
/// the end of a step's output goes as a line of its own; whole lines have buildah's step
/// lines rewritten the Docker way; the chunks of a long line go as they are. Returns the
/// last step line (`Step 3/5 : RUN make`), which names the step a failed build was on.
async fn forward(logger: &Logger, mut source: LineSource) -> Option<String> {
    let mut at_line_start = true;
    let mut last_step = None;
    while let Some(mut chunk) = source.next().await {
        let glued = match chunk.continues {
            false => backend::glued_tool_message(&chunk.text).map(|at| chunk.text.split_off(at)),
            true => None,
        };
        for mut piece in std::iter::once(chunk).chain(glued.map(Chunk::line)) {
            if at_line_start && !piece.continues {
                piece.text = backend::normalize_step_line(&piece.text);
                if piece.text.starts_with("Step ") {
                    last_step = Some(piece.text.clone());
                }
            }
            at_line_start = !piece.continues;
            logger.output(&piece).await;
        }
    }
    last_step
}

/// Docker's rule, which buildah follows too: registries on the loopback interface are
/// spoken to over plain http.
fn is_loopback_registry(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

/// `registry/repo:tag` → (registry, repo, tag) with Docker's defaults.
fn split_image(image: &str) -> (String, String, String) {
    let (name, tag) = match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (image, "latest"),
    };
    let name = name.split('@').next().unwrap_or(name);
    match name.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            (host.to_string(), rest.to_string(), tag.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string(), tag.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_with_docker_defaults() {
        let s = |i| split_image(i);
        assert_eq!(
            s("alpine"),
            ("docker.io".into(), "alpine".into(), "latest".into())
        );
        assert_eq!(
            s("library/alpine:3"),
            ("docker.io".into(), "library/alpine".into(), "3".into())
        );
        assert_eq!(
            s("127.0.0.1:5000/base"),
            ("127.0.0.1:5000".into(), "base".into(), "latest".into())
        );
        assert_eq!(
            s("quay.io/ns/repo:v1"),
            ("quay.io".into(), "ns/repo".into(), "v1".into())
        );
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(!is_loopback_registry("quay.io"));
    }
}
