//! The HTTP server under every Tollgate HTTP listener (edge, metrics): HTTP/1.1 with a
//! header-read timeout that also closes idle keep-alive connections, on connections
//! accepted within [`ListenerLimits`], and a graceful stop that lets in-flight requests
//! finish while the caller's drain deadline runs.

use std::convert::Infallible;
use std::future::Future;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tollgate_decision::listener::{self, ListenerLimits};
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` completes, then lets the open
/// connections finish their requests (bounded by the caller's drain deadline).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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
                let router = router.clone();
                let mut stopped = stopped.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        let router = router.clone();
                        async move { Ok::<_, Infallible>(router.oneshot(request.map(Body::new)).await.unwrap_or_else(|e| match e {})) }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.handshake_timeout)
                        .keep_alive(true);
                    let connection = builder.serve_connection(TokioIo::new(connection), service);
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = stopped.changed() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
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
