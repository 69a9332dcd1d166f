//! A TCP proxy for tests that cut or move a worker's connection to its manager.

/// A TCP proxy between the worker and a manager's gRPC port that a test can cut (while cut,
/// live connections are dropped and new ones refused), silence, or point at another manager.
pub struct Proxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// True cuts every connection and refuses new ones until set back to false.
    pub cut: tokio::sync::watch::Sender<bool>,
    /// A send silences every live connection: it stays open but carries nothing more, as
    /// when the peer's host vanished. New connections work.
    pub silence: tokio::sync::broadcast::Sender<()>,
    /// Where new connections go; `None` drops them.
    pub target: tokio::sync::watch::Sender<Option<std::net::SocketAddr>>,
    /// How many connections it accepted.
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    /// Starts a proxy with no target.
    pub async fn start() -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let (target, target_rx) = tokio::sync::watch::channel(None);
        let (silence, _) = tokio::sync::broadcast::channel(1);
        let silencer = silence.clone();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut links = tokio::task::JoinSet::new();
            let mut cut_rx = cut_rx;
            loop {
                if *cut_rx.borrow() {
                    links.abort_all();
                    listener = None;
                    let _ = cut_rx.wait_for(|c| !c).await;
                    continue;
                }
                let l = match &listener {
                    Some(l) => l,
                    None => {
                        listener = Some(
                            tokio::net::TcpListener::bind(("127.0.0.1", port))
                                .await
                                .unwrap(),
                        );
                        continue;
                    }
                };
                tokio::select! {
                    _ = cut_rx.changed() => {}
                    accepted = l.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        count.fetch_add(1, Ordering::SeqCst);
                        let Some(to) = *target_rx.borrow() else { continue };
                        let mut silenced = silencer.subscribe();
                        links.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                    // Both sockets stay open until the proxy goes.
                                    _ = silenced.recv() => std::future::pending::<()>().await,
                                }
                            }
                        });
                    }
                }
            }
        });
        Proxy {
            port,
            cut,
            silence,
            target,
            accepted,
        }
    }
}
