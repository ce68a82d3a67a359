//! The HTTP server under every Tollgate HTTP listener (edge, metrics): HTTP/1.1 (and
//! HTTP/2 where the listener's limits allow it, for the demo upstream) with a
//! header-read timeout that also closes idle keep-alive connections, on connections
//! accepted within [`ListenerLimits`], optionally over TLS (the handshake bounded by the
//! same timeout), and a graceful stop that lets in-flight requests finish while the
//! caller's drain deadline runs.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tollgate_api::listener::{self, ListenerLimits};
use tower::ServiceExt;

/// The address a request's connection came from, in its extensions (for per-address
/// throttles; behind a proxy it is the proxy's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Serves `router` on `listener` until `shutdown` completes, then lets the open
/// connections finish their requests (bounded by the caller's drain deadline).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, router, limits, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is set (`tollgate_tls::server_config`: the certificate
/// is re-read when its files change, so the next handshake after a rotation uses it).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut incoming = listener::incoming(listener, limits);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = incoming.next() => {
                let Some(Ok(connection)) = accepted else { break };
                let peer = connection.peer_addr().map(PeerAddr);
                let router = router.clone();
                let stopped = stopped.clone();
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    match acceptor {
                        None => serve_connection(connection, router, limits, stopped, peer).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(connection)).await {
                                Ok(Ok(tls)) => serve_connection(tls, router, limits, stopped, peer).await,
                                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                                Err(_) => tracing::debug!("TLS handshake did not finish within the handshake timeout"),
                            }
                        }
                    }
                });
            }
        }
    }
    drop(incoming);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves a hyper connection until it closes, or until the server stops: then it finishes
/// the requests in flight (both connection kinds have `graceful_shutdown`, no shared trait).
macro_rules! until_stopped {
    ($connection:expr, $stopped:expr) => {{
        let mut connection = std::pin::pin!($connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = $stopped.changed() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }};
}

/// HTTP/1.1 (or HTTP/2, when `limits.http2`) on one accepted connection (plain or TLS)
/// until it closes or the server stops.
async fn serve_connection<IO>(
    io: IO,
    router: Router,
    limits: ListenerLimits,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    peer: Option<PeerAddr>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let router = router.clone();
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        async move {
            Ok::<_, Infallible>(
                router
                    .oneshot(request.map(Body::new))
                    .await
                    .unwrap_or_else(|e| match e {}),
            )
        }
    });
    if limits.http2 {
        let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.handshake_timeout)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        until_stopped!(builder.serve_connection(TokioIo::new(io), service), stopped);
        return;
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .keep_alive(true);
    until_stopped!(builder.serve_connection(TokioIo::new(io), service), stopped);
}
