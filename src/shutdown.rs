//! SIGTERM / Ctrl-C handling: one signal starts a graceful drain for every server in the
//! process; the drain is bounded so that long-lived streams cannot hold the exit.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Starts listening for SIGTERM and Ctrl-C.
    pub fn on_signals() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: no new connections, draining in-flight requests");
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// Completes when shutdown has been requested.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Runs `server` until it ends by itself, or until `drain` after shutdown was requested.
    pub async fn drain<T>(&self, drain: Duration, server: impl Future<Output = T>) -> Option<T> {
        let deadline = {
            let requested = self.requested();
            async move {
                requested.await;
                tokio::time::sleep(drain).await;
            }
        };
        tokio::select! {
            out = server => Some(out),
            () = deadline => {
                tracing::warn!("drain deadline of {drain:?} passed; closing remaining connections");
                None
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); Ctrl-C still works");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
