//! moto's AWS emulator (`moto_server`, PyPI `moto[server]`) on 127.0.0.1 and a free port,
//! killed when dropped; and [`QueryProxy`], a proxy in front of it that fails, rewrites and
//! records chosen calls of AWS's query APIs (EC2's), for answers moto cannot give.
//! moto accepts any credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long moto may take to answer after it started (it is a Python program).
const STARTUP: Duration = Duration::from_secs(60);

/// A running `moto_server`.
pub struct Moto {
    _child: Child,
    port: u16,
}

impl Moto {
    /// Starts a server on a free port; panics when moto_server is missing or never answers.
    pub async fn start() -> Moto {
        for _ in 0..5 {
            let port = crate::free_port();
            if let Some(child) = spawn(port).await {
                return Moto {
                    _child: child,
                    port,
                };
            }
        }
        panic!("moto_server did not start on any of 5 free ports");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Starts moto_server on `port` and waits until it answers; `None` when it exits instead
/// (the port was taken).
async fn spawn(port: u16) -> Option<Child> {
    let mut command = Command::new("moto_server");
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let mut child = crate::spawn_quiet(&mut command, "pip install 'moto[server]' (.ci/run does)");
    let http = crate::http_client();
    let url = format!("http://127.0.0.1:{port}/moto-api/");
    let deadline = Instant::now() + STARTUP;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if http.get(&url).send().await.is_ok() {
            return Some(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto_server on port {port} did not answer within {STARTUP:?}");
}

/// What the proxy does with the calls of one action.
#[derive(Clone, Debug)]
enum Rule {
    /// Answers the next `times` calls with an AWS error, without passing them on.
    Fail {
        status: u16,
        code: String,
        times: usize,
    },
    /// Passes calls on, replacing the first `from` in each answer with `to`.
    Rewrite { from: String, to: String },
}

#[derive(Default)]
struct ProxyState {
    rules: HashMap<String, Rule>,
    /// The request bodies seen, per action, oldest first.
    seen: HashMap<String, Vec<String>>,
}

/// A proxy in front of an AWS query API (form bodies with `Action=...`).
pub struct QueryProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
    _server: tokio::task::JoinHandle<()>,
}

/// The request id in the proxy's own error answers.
pub const PROXY_REQUEST_ID: &str = "5a1d-proxy-request-id";

impl QueryProxy {
    /// A proxy on a free loopback port passing every call on to `upstream` until told
    /// otherwise.
    pub async fn start(upstream: &str) -> QueryProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let forward = Forward {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: crate::http_client(),
            state: state.clone(),
        };
        let app = axum::Router::new().fallback(move |request| forward.clone().handle(request));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        QueryProxy {
            port,
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `times` calls of `action` get an AWS error `code` with HTTP `status`.
    pub fn fail(&self, action: &str, status: u16, code: &str, times: usize) {
        let rule = Rule::Fail {
            status,
            code: code.to_owned(),
            times,
        };
        self.state().rules.insert(action.to_owned(), rule);
    }

    /// Answers to `action` have their first `from` replaced with `to`.
    pub fn rewrite(&self, action: &str, from: &str, to: &str) {
        let rule = Rule::Rewrite {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        self.state().rules.insert(action.to_owned(), rule);
    }

    /// Calls of `action` pass unchanged again.
    pub fn clear(&self, action: &str) {
        self.state().rules.remove(action);
    }

    /// The request bodies of `action` seen so far (failed ones too).
    pub fn requests(&self, action: &str) -> Vec<String> {
        self.state().seen.get(action).cloned().unwrap_or_default()
    }
}

#[derive(Clone)]
struct Forward {
    upstream: String,
    http: reqwest::Client,
    state: Arc<Mutex<ProxyState>>,
}

type Answer = (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>);

impl Forward {
    async fn handle(self, request: axum::extract::Request) -> Answer {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 16 << 20)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        let action = (text.split('&'))
            .find_map(|pair| pair.strip_prefix("Action="))
            .unwrap_or_default()
            .to_owned();
        let rule = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.seen.entry(action.clone()).or_default().push(text);
            let rule = state.rules.get_mut(&action);
            match rule {
                Some(Rule::Fail { times, .. }) if *times == 0 => None,
                Some(Rule::Fail { times, .. }) => {
                    *times -= 1;
                    rule.cloned()
                }
                other => other.cloned(),
            }
        };
        if let Some(Rule::Fail { status, code, .. }) = rule {
            return error_answer(status, &code);
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut forwarded = self
            .http
            .request(parts.method, format!("{}{path}", self.upstream))
            .body(body);
        for (name, value) in &parts.headers {
            if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
                forwarded = forwarded.header(name, value);
            }
        }
        let Ok(answer) = forwarded.send().await else {
            return error_answer(502, "ProxyUpstreamUnreachable");
        };
        let status = answer.status();
        let mut headers = answer.headers().clone();
        headers.remove(axum::http::header::CONTENT_LENGTH);
        headers.remove(axum::http::header::TRANSFER_ENCODING);
        let mut body = answer.bytes().await.unwrap_or_default().to_vec();
        if let Some(Rule::Rewrite { from, to }) = rule {
            body = String::from_utf8_lossy(&body)
                .replacen(&from, &to, 1)
                .into_bytes();
        }
        (status, headers, body)
    }
}

/// An AWS query-API error answer, as EC2 writes them.
fn error_answer(status: u16, code: &str) -> Answer {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{code} (answered by the test proxy)</Message></Error></Errors>\
         <RequestID>{PROXY_REQUEST_ID}</RequestID></Response>"
    );
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    let status = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, headers, body.into_bytes())
}
