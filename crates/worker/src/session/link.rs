//! The connection to the manager.
//!
//! The worker sends no HTTP/2 keepalive pings: gRPC servers (grpc-core: Quay's manager)
//! allow a ping without data sent in between only once every 5 minutes and answer more
//! with GOAWAY `too_many_pings`. The heartbeat stream is the keepalive instead: a beat
//! unanswered within its timeout (or a call or log line unanswered within
//! [`super::ANSWER_TIMEOUT`]) makes the worker [`Link::redial`] — a connection that died
//! without closing (a manager host that vanished) never fails by itself.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{Client, SessionError};

/// How the worker reaches its manager (quay-builder's SERVER, INSECURE, TLS_CERT_PATH).
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port`.
    pub server: String,
    /// Plaintext gRPC.
    pub insecure: bool,
    /// A CA bundle (PEM) to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// quay-builder's connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Target {
    fn channel(&self) -> Result<Channel, SessionError> {
        let scheme = if self.insecure { "http" } else { "https" };
        let bad =
            |e: &dyn std::fmt::Display| SessionError::Endpoint(format!("{}: {e}", self.server));
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.server))
            .map_err(|e| bad(&e))?
            .connect_timeout(CONNECT_TIMEOUT);
        if !self.insecure {
            let tls = match &self.ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(&e))?;
        }
        // Lazy: the channel dials on first use and again after every failure.
        Ok(endpoint.connect_lazy())
    }
}

/// The worker's connection to its manager, shared by all its calls and streams.
#[derive(Clone)]
pub(super) struct Link {
    target: Arc<Target>,
    current: Arc<watch::Sender<Dialled>>,
}

/// One connection: its client, and how many were dialled before it.
struct Dialled {
    generation: u64,
    client: Client,
}

impl Link {
    /// A link to `target`; it dials on first use.
    pub(super) fn new(target: &Target) -> Result<Link, SessionError> {
        let client = Client::new(target.channel()?);
        Ok(Link {
            target: Arc::new(target.clone()),
            current: Arc::new(watch::Sender::new(Dialled {
                generation: 0,
                client,
            })),
        })
    }

    /// The current connection's client, and its generation (for [`Link::redial`]).
    pub(super) fn current(&self) -> (Client, u64) {
        let dialled = self.current.borrow();
        (dialled.client.clone(), dialled.generation)
    }

    /// Replaces connection `generation`, which went unanswered, with a new one (unless
    /// another call did already). Streams on the old one follow ([`Link::replaced`]);
    /// unary calls end on their own timeouts.
    pub(super) fn redial(&self, generation: u64) {
        self.current.send_if_modified(|dialled| {
            if dialled.generation != generation {
                return false;
            }
            match self.target.channel() {
                Ok(channel) => {
                    tracing::warn!(server = %self.target.server, "the build manager stopped answering; dialling again");
                    dialled.client = Client::new(channel);
                    dialled.generation += 1;
                    true
                }
                // The endpoint was good when the session started: not expected.
                Err(e) => {
                    tracing::error!(error = %e, "cannot dial the build manager again");
                    false
                }
            }
        });
    }

    /// Resolves once connection `generation` was replaced by [`Link::redial`].
    pub(super) fn replaced(&self, generation: u64) -> impl Future<Output = ()> + use<> {
        let mut current = self.current.subscribe();
        async move {
            let _ = current.wait_for(|d| d.generation != generation).await;
        }
    }

    /// The manager's `host:port`.
    pub(super) fn server(&self) -> &str {
        &self.target.server
    }
}
