//! The fake API server's HTTP side: the routes the executor calls, `Status` errors, list
//! and watch responses, and the listener (plain or TLS, with optional client certificates).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PodStatus;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use super::store::matches;
use super::{Auth, PodOutcome, Seen, Shared, TlsFiles};

/// What the server knows of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Whether it presented a client certificate the server's CA signed.
    pub client_certificate: bool,
}

type Fake = Arc<Shared>;

pub(super) async fn serve(
    shared: Fake,
    tls: Option<TlsFiles>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("local addr");
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&t))));
    let listener = Listener { tcp, tls: acceptor };
    let app = Router::new()
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs",
            get(list_jobs).post(create_job),
        )
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            get(get_job).delete(delete_job),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods",
            get(list_pods).delete(delete_pods),
        )
        .fallback(|| async {
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared);
    let service = app.into_make_service_with_connect_info::<Peer>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, service).await;
    });
    (addr, task)
}

fn server_config(tls: &TlsFiles) -> rustls::ServerConfig {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .expect("server certificate")
        .collect::<Result<_, _>>()
        .expect("server certificate PEM");
    let key = PrivateKeyDer::from_pem_file(&tls.key).expect("server key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).expect("client CA") {
                roots.add(cert.expect("client CA PEM")).expect("client CA");
            }
            // Like an API server: a certificate is one way to authenticate, not required.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .expect("server certificate and key")
}

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

struct Listener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl axum::serve::Listener for Listener {
    type Io = Box<dyn Io>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Peer) {
        loop {
            let Ok((tcp, _)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Some(acceptor) = &self.tls else {
                return (
                    Box::new(tcp),
                    Peer {
                        client_certificate: false,
                    },
                );
            };
            // A refused handshake (wrong CA on the client's side) just drops the connection.
            let handshake = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp));
            if let Ok(Ok(stream)) = handshake.await {
                let (_, session) = stream.get_ref();
                let client_certificate = session.peer_certificates().is_some_and(|c| !c.is_empty());
                return (Box::new(stream) as Box<dyn Io>, Peer { client_certificate });
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            client_certificate: false,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A `Status` answer, as the API sends every error.
pub(super) fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(body)).into_response()
}

/// Records the request, checks its credentials, applies injected failures and hangs.
async fn gate(
    State(shared): State<Fake>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = (request.headers().get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let method = request.method().to_string();
    let injected = {
        let mut store = shared.store();
        store.seen.push(Seen {
            method: method.clone(),
            path: request.uri().path().to_string(),
            query: request.uri().query().unwrap_or("").to_string(),
            authorization: authorization.clone(),
            client_certificate: peer.client_certificate,
        });
        let hang = store.hang;
        let failure = store
            .failures
            .iter_mut()
            .find(|f| f.method == method && f.times > 0);
        let failure = failure.map(|f| {
            f.times -= 1;
            status(f.code, &f.reason, &f.message)
        });
        (hang, failure)
    };
    if injected.0 {
        std::future::pending::<()>().await;
    }
    let allowed = match &shared.auth {
        Auth::Anyone => true,
        Auth::Bearer(token) => authorization.as_deref() == Some(&format!("Bearer {token}")),
        Auth::ClientCertificate => peer.client_certificate,
    };
    if !allowed {
        return status(401, "Unauthorized", "Unauthorized");
    }
    match injected.1 {
        Some(failure) => failure,
        None => next.run(request).await,
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    label_selector: Option<String>,
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
}

impl ListQuery {
    fn watching(&self) -> bool {
        matches!(self.watch.as_deref(), Some("true" | "1"))
    }
}

async fn list_jobs(State(s): State<Fake>, Query(q): Query<ListQuery>) -> Response {
    list_or_watch(&s, "Job", "batch/v1", q)
}

async fn list_pods(State(s): State<Fake>, Query(q): Query<ListQuery>) -> Response {
    list_or_watch(&s, "Pod", "v1", q)
}

fn list_or_watch(shared: &Fake, kind: &'static str, api_version: &str, q: ListQuery) -> Response {
    let selector = q.label_selector.clone().unwrap_or_default();
    if q.watching() {
        return watch(shared, kind, selector, q);
    }
    let store = shared.store();
    let items: Vec<Value> = match kind {
        "Job" => (store.jobs.values())
            .filter(|j| {
                matches(
                    &selector,
                    j.metadata.labels.as_ref().unwrap_or(&Default::default()),
                )
            })
            .map(|j| serde_json::to_value(j).unwrap_or_default())
            .collect(),
        _ => (store.pods.values())
            .filter(|p| {
                matches(
                    &selector,
                    p.metadata.labels.as_ref().unwrap_or(&Default::default()),
                )
            })
            .map(|p| serde_json::to_value(p).unwrap_or_default())
            .collect(),
    };
    axum::Json(json!({
        "kind": format!("{kind}List"), "apiVersion": api_version,
        "metadata": {"resourceVersion": store.version().to_string()},
        "items": items,
    }))
    .into_response()
}

/// A watch: the changes after `resourceVersion` matching the selector, one JSON line each,
/// until the request's timeout.
fn watch(shared: &Fake, kind: &'static str, selector: String, q: ListQuery) -> Response {
    let from: u64 = (q.resource_version.as_deref())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let until =
        tokio::time::Instant::now() + Duration::from_secs(q.timeout_seconds.unwrap_or(290).min(30));
    let changed = shared.changed.subscribe();
    let state = (shared.clone(), changed, from);
    let lines = futures::stream::unfold(state, move |(shared, mut changed, mut seen)| {
        let selector = selector.clone();
        async move {
            loop {
                let lines: Vec<String> = {
                    let store = shared.store();
                    let new = store
                        .events
                        .iter()
                        .filter(|e| e.version > seen && e.kind == kind);
                    let picked: Vec<String> = new
                        .filter(|e| matches(&selector, &e.labels))
                        .map(|e| {
                            json!({"type": e.kind_of_change, "object": e.object}).to_string() + "\n"
                        })
                        .collect();
                    seen = store.version();
                    picked
                };
                if !lines.is_empty() {
                    return Some((
                        Ok::<_, std::io::Error>(lines.concat()),
                        (shared, changed, seen),
                    ));
                }
                match tokio::time::timeout_at(until, changed.recv()).await {
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| status(500, "InternalError", "watch"))
}

async fn create_job(
    State(shared): State<Fake>,
    Path(ns): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let job: Job = match serde_json::from_slice(&body) {
        Ok(job) => job,
        Err(e) => {
            return status(
                400,
                "BadRequest",
                &format!("the body of the request was in an unknown format: {e}"),
            );
        }
    };
    if job.metadata.name.is_none() && job.metadata.generate_name.is_none() {
        return status(
            422,
            "Invalid",
            "Job.batch \"\" is invalid: metadata.name: Required value: name or generateName is required",
        );
    }
    if job.metadata.namespace.as_deref().is_some_and(|n| n != ns) {
        return status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let kubelet = shared
        .kubelet
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let (created, pod) = {
        let mut store = shared.store();
        if let Some(name) = &job.metadata.name
            && store.jobs.contains_key(name)
        {
            return status(
                409,
                "AlreadyExists",
                &format!("jobs.batch \"{name}\" already exists"),
            );
        }
        let mut job = job;
        job.metadata.namespace = Some(ns);
        let name = store.put_job(job);
        let pod = store.make_pod(&name);
        (store.jobs.get(&name).cloned(), pod)
    };
    let _ = shared.changed.send(0);
    if let Some(pod) = pod {
        run_pod(&shared, &kubelet, pod);
    }
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

/// Applies the kubelet's decision to a new pod.
fn run_pod(shared: &Fake, kubelet: &super::Kubelet, pod: k8s_openapi::api::core::v1::Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let job = (pod.metadata.labels.as_ref())
        .and_then(|l| l.get("job-name").cloned())
        .unwrap_or_default();
    match kubelet(&pod) {
        PodOutcome::Pending => {}
        PodOutcome::Status(status) => {
            shared.store().update_pod(&name, *status);
            let _ = shared.changed.send(0);
        }
        PodOutcome::Run(mut child) => {
            let (kill, killed) = tokio::sync::oneshot::channel();
            {
                let mut store = shared.store();
                store.running.insert(name.clone(), kill);
                store.update_pod(
                    &name,
                    PodStatus {
                        phase: Some("Running".into()),
                        ..PodStatus::default()
                    },
                );
            }
            let _ = shared.changed.send(0);
            let shared = shared.clone();
            tokio::spawn(async move {
                let pid = child.id();
                tokio::select! {
                    exit = child.wait() => {
                        let ok = exit.is_ok_and(|s| s.success());
                        let phase = if ok { "Succeeded" } else { "Failed" };
                        let mut store = shared.store();
                        store.running.remove(&name);
                        store.update_pod(&name, PodStatus { phase: Some(phase.into()), ..PodStatus::default() });
                        let failed = ("BackoffLimitExceeded", "Job has reached the specified backoff limit");
                        store.finish_job(&job, (!ok).then_some(failed));
                    }
                    _ = killed => {
                        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                            // SAFETY: kill(2) on the process group the test's child leads.
                            unsafe { libc::kill(-pid, libc::SIGKILL) };
                        }
                        let _ = child.wait().await;
                    }
                }
                let _ = shared.changed.send(0);
            });
        }
    }
}

async fn get_job(State(shared): State<Fake>, Path((_, name)): Path<(String, String)>) -> Response {
    match shared.store().jobs.get(&name) {
        Some(job) => axum::Json(job).into_response(),
        None => status(404, "NotFound", &format!("jobs.batch \"{name}\" not found")),
    }
}

async fn delete_job(
    State(shared): State<Fake>,
    Path((_, name)): Path<(String, String)>,
) -> Response {
    let deleted = shared.store().delete_job(&name);
    let _ = shared.changed.send(0);
    match deleted {
        Some(job) => axum::Json(job).into_response(),
        None => status(404, "NotFound", &format!("jobs.batch \"{name}\" not found")),
    }
}

async fn delete_pods(
    State(shared): State<Fake>,
    Query(q): Query<ListQuery>,
    method: Method,
) -> Response {
    debug_assert_eq!(method, Method::DELETE);
    let selector = q.label_selector.unwrap_or_default();
    let mut store = shared.store();
    let names: Vec<String> = (store.pods.iter())
        .filter(|(_, p)| {
            matches(
                &selector,
                p.metadata.labels.as_ref().unwrap_or(&Default::default()),
            )
        })
        .map(|(n, _)| n.clone())
        .collect();
    let items: Vec<Value> = (names.iter())
        .filter_map(|n| store.delete_pod(n))
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .collect();
    let version = store.version().to_string();
    drop(store);
    let _ = shared.changed.send(0);
    axum::Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}))
        .into_response()
}
