//! What a registered worker is handed to run a build (the worker protocol's BuildPack,
//! without the job token the manager adds): one type whether the manager derived it from
//! its own store or from Quay's rows.

/// Where the worker gets the build context (the BuildPack's `build_pack` oneof).
#[derive(Clone, PartialEq, Eq)]
pub enum PackageSource {
    /// An http(s) URL of an archive (or a lone Dockerfile).
    Url(String),
    /// A git repository at a commit, cloned with `private_key` when it is not empty.
    Git {
        url: String,
        sha: String,
        private_key: String,
    },
}

/// The BuildPack's fields. `Debug` shows neither tokens, passwords nor keys.
#[derive(Clone, PartialEq, Eq)]
pub struct BuildPack {
    pub source: PackageSource,
    pub context: String,
    pub dockerfile_path: String,
    /// `<namespace>/<repository>`.
    pub repository: String,
    /// The registry host the worker pushes to.
    pub registry: String,
    /// Passwords for the user `$token` at `registry` (Quay's scheme).
    pub pull_token: String,
    pub push_token: String,
    pub tag_names: Vec<String>,
    /// Username and password for pulling base images, when the build has them.
    pub base_image: Option<(String, String)>,
}

impl std::fmt::Debug for BuildPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildPack")
            .field("context", &self.context)
            .field("dockerfile_path", &self.dockerfile_path)
            .field("repository", &self.repository)
            .field("registry", &self.registry)
            .field("tag_names", &self.tag_names)
            .finish_non_exhaustive()
    }
}
