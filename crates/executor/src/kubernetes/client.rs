//! Where the Kubernetes API is and how to prove who we are, decided as Quay decides it from
//! the K8S_API_* keys, or from a kubeconfig or the pod's own service account:
//!
//! 1. K8S_KUBECONFIG: that file's current context.
//! 2. None of K8S_API_SERVER, SERVICE_ACCOUNT_TOKEN, K8S_API_TLS_CERT/KEY and K8S_API_TLS_CA
//!    set, and the manager runs in a pod (KUBERNETES_SERVICE_HOST is set): the in-cluster
//!    configuration (the pod's service-account token and CA).
//! 3. Otherwise Quay's rule: https with a bearer SERVICE_ACCOUNT_TOKEN, else https with the
//!    client certificate K8S_API_TLS_CERT/KEY, else plain http; to K8S_API_SERVER (default
//!    `localhost:8080`; a value with a scheme is taken as given), the server checked against
//!    K8S_API_TLS_CA when set (the system's roots otherwise), not at all with VERIFY_TLS false.
//!
//! Every request gets K8S_API_TIMEOUT; the watch has no read deadline of its own (it stays
//! open and quiet), the watcher restarts it.

use std::path::Path;
use std::time::Duration;

use buildman_core::config::KubernetesConfig;
use buildman_core::error_chain as chain;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How the client was configured, for the start-up log line (no secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// K8S_KUBECONFIG.
    Kubeconfig,
    /// The pod's service account.
    InCluster,
    /// The K8S_API_* keys, with this authentication.
    Keys(&'static str),
}

/// The client configuration for `k`, and where it came from.
pub async fn configure(k: &KubernetesConfig) -> Result<(kube::Config, Source), String> {
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let (mut config, source) = if let Some(path) = &k.k8s_kubeconfig {
        (from_kubeconfig(path).await?, Source::Kubeconfig)
    } else if in_pod && no_connection_keys(k) {
        let config = kube::Config::incluster()
            .map_err(|e| format!("the in-cluster configuration: {}", chain(&e)))?;
        (config, Source::InCluster)
    } else {
        from_keys(k)?
    };
    config.default_namespace = k.builder_namespace.clone();
    config.connect_timeout = Some(timeout(k));
    config.write_timeout = Some(timeout(k));
    // Each call is bounded as a whole by K8S_API_TIMEOUT (see `Calls`); a read timeout
    // here would also cut the quiet watch.
    config.read_timeout = None;
    Ok((config, source))
}

fn no_connection_keys(k: &KubernetesConfig) -> bool {
    k.k8s_api_server.is_none()
        && k.service_account_token.is_none()
        && k.k8s_api_tls_cert.is_none()
        && k.k8s_api_tls_key.is_none()
        && k.k8s_api_tls_ca.is_none()
}

async fn from_kubeconfig(path: &Path) -> Result<kube::Config, String> {
    let file = Kubeconfig::read_from(path)
        .map_err(|e| format!("K8S_KUBECONFIG {}: {}", path.display(), chain(&e)))?;
    kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("K8S_KUBECONFIG {}: {}", path.display(), chain(&e)))
}

/// Quay's rule over the K8S_API_* keys.
fn from_keys(k: &KubernetesConfig) -> Result<(kube::Config, Source), String> {
    let token = k.service_account_token.as_deref().filter(|t| !t.is_empty());
    let (scheme, auth) = match (token, &k.k8s_api_tls_cert, &k.k8s_api_tls_key) {
        (Some(_), _, _) => ("https", "bearer token"),
        (None, Some(_), Some(_)) => ("https", "client certificate"),
        _ => ("http", "none (plain http)"),
    };
    let server = k.k8s_api_server.as_deref().unwrap_or("localhost:8080");
    let url = if server.contains("://") {
        server.to_string()
    } else {
        format!("{scheme}://{server}")
    };
    let uri = url
        .parse()
        .map_err(|e| format!("K8S_API_SERVER {server:?} is not a host:port or URL: {e}"))?;
    let mut config = kube::Config::new(uri);
    if let Some(token) = token {
        config.auth_info.token = Some(secrecy::SecretString::from(token.to_string()));
    } else if let (Some(cert), Some(key)) = (&k.k8s_api_tls_cert, &k.k8s_api_tls_key) {
        readable("K8S_API_TLS_CERT", cert)?;
        readable("K8S_API_TLS_KEY", key)?;
        config.auth_info.client_certificate = Some(cert.display().to_string());
        config.auth_info.client_key = Some(key.display().to_string());
    }
    if let Some(ca) = &k.k8s_api_tls_ca {
        readable("K8S_API_TLS_CA", ca)?;
        // kube re-reads the file now and then, so a rotated CA is picked up.
        config.root_cert_file = Some(ca.clone());
    }
    config.accept_invalid_certs = !k.verify_tls;
    Ok((config, Source::Keys(auth)))
}

/// A file the client will read, checked now so the error names the key.
fn readable(key: &str, path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("{key} {}: {e}", path.display()))
}

/// A client over `config`.
pub fn client(config: kube::Config) -> Result<kube::Client, String> {
    kube::Client::try_from(config).map_err(|e| format!("the Kubernetes client: {}", chain(&e)))
}

/// K8S_API_TIMEOUT of `k`, at least a second (a zero timeout would fail every call).
pub fn timeout(k: &KubernetesConfig) -> Duration {
    k.k8s_api_timeout.max(Duration::from_secs(1))
}
