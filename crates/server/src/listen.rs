//! Listeners with bounds, for the REST API and the worker service alike: at most
//! MAX_CONNECTIONS open connections per listener (a further client waits in the kernel's
//! listen backlog, costing the manager no file descriptor, until one closes), and every
//! connection closed once nothing was read or written on it for IDLE_TIMEOUT. So idle or
//! half-open connections, however many, cannot starve `/healthz` or a worker's Ping for
//! longer than the idle timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A TCP listener that holds at most `max_connections` connections open at once.
pub struct BoundedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl BoundedListener {
    /// Bounds `listener`: `max_connections` open at once, each closed after `idle_timeout`
    /// without traffic.
    pub fn new(listener: TcpListener, max_connections: u32, idle_timeout: Duration) -> Self {
        BoundedListener {
            listener,
            permits: Arc::new(Semaphore::new(max_connections as usize)),
            idle_timeout,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, once fewer than the maximum are open (accept is not even called
    /// before that, so the kernel keeps the others waiting). Errors of one connection are
    /// skipped; running out of descriptors waits a moment rather than spinning.
    pub async fn accept(&self) -> (Bounded, SocketAddr) {
        let permit =
            (self.permits.clone().acquire_owned().await).expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    // Small requests and answers: Nagle's algorithm would hold answers back
                    // for the client's delayed ACK.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    return (Bounded::new(tcp, permit, self.idle_timeout), peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The connections as a stream (for tonic's `serve_with_incoming`).
    pub fn incoming(self) -> impl futures::Stream<Item = io::Result<Bounded>> + Send {
        futures::stream::unfold(self, |listener| async move {
            let (conn, _) = listener.accept().await;
            Some((Ok(conn), listener))
        })
    }
}

/// A connection of a [`BoundedListener`]: frees its slot when dropped, and fails with
/// `TimedOut` once idle for longer than the listener's idle timeout.
pub struct Bounded {
    io: TcpStream,
    idle_timeout: Duration,
    last_traffic: Instant,
    /// Fires at `last_traffic + idle_timeout` or earlier; re-armed lazily, so traffic costs
    /// a clock read, not a timer update.
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Bounded {
    fn new(io: TcpStream, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        Bounded {
            io,
            idle_timeout,
            last_traffic: now,
            deadline: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            _slot: slot,
        }
    }

    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// After a poll that moved no bytes: an error once the connection has been idle for the
    /// idle timeout, else registers the wake-up for when it will have been.
    fn idle_check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let due = self.last_traffic + self.idle_timeout;
            if due <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for longer than BUILDMAN_LIMITS.IDLE_TIMEOUT",
                ));
            }
            self.deadline.as_mut().reset(due);
        }
    }

    /// Notes traffic when `poll` moved bytes, and checks idleness when it is waiting.
    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
        moved: bool,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                if moved {
                    self.last_traffic = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle_check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        self.track(cx, poll, moved)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.track(cx, poll, moved)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.track(cx, poll, moved)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves `routes` over HTTP/1 on `listener` until `shutdown`, then lets requests in
/// flight finish. A client gets `header_read_timeout` to send a request's headers (a slow
/// sender cannot hold a connection slot for long), besides the listener's idle timeout.
pub async fn serve_http(
    routes: axum::Router,
    listener: BoundedListener,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let (closing, closed) = tokio::sync::watch::channel(false);
    let connections = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            conn = listener.accept() => conn,
        };
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |request| {
            tower::Service::call(&mut routes.clone(), request)
        });
        let mut closed = closed.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = async { closed.wait_for(|c| *c).await.map(drop) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    connections.close();
    connections.wait().await;
}
