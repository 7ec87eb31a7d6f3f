//! The serve loop: connections, their limits, and a graceful end.

use std::future::Future;
use std::sync::Arc;

use axum::Router;

use crate::config::Limits;

/// The largest request head (request line and headers) read: room for a 16 KiB token
/// in a header and ordinary proxy headers. Past it, hyper answers 431.
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown`
/// completes, then lets the connections finish their requests in progress.
///
/// Served through hyper-util rather than `axum::serve`, which sets no timer, so that
/// hyper's header-read timeout works: a client that dribbles its headers is dropped
/// after `limits.header_read_timeout`. HTTP/1.1 only (no HTTP/2, so no rapid-reset
/// exposure); at most `limits.max_connections` at once, past which a new connection is
/// closed at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => serve_with(listener, limits, router, shutdown).await,
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config)?;
            serve_with(listener, limits, router, shutdown).await
        }
    }
}

async fn serve_with<L>(
    mut listener: L,
    limits: Limits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: Send + 'static,
{
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(
                max = limits.max_connections,
                "connection refused: max_connections reached"
            );
            drop(io);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(io), service));
        let connection = async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        };
        tokio::spawn(connection);
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
