//! The sim's accept loop: TCP, optional TLS, HTTP/1.1 connections served by the router.
//!
//! Responsible for: accepting connections, the TLS handshake (bounded), handing each
//! request to the axum router with a [`KillSwitch`] in its extensions (the `reset` knob
//! uses it to drop the connection with a TCP RST and no response), and owning every
//! connection task in a `JoinSet`, so that aborting the loop ends them all at once.
//!
//! Not responsible for: what the requests mean (see `api`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops the connection a request came on, with a TCP reset and no response.
#[derive(Clone)]
pub(crate) struct KillSwitch(Arc<KillInner>);

struct KillInner {
    /// A duplicate of the connection's socket, kept to set `SO_LINGER` to zero so that
    /// closing it sends RST (a peer sees "connection reset"), not FIN.
    socket: Mutex<Option<std::net::TcpStream>>,
    killed: Notify,
}

impl KillSwitch {
    fn new(socket: Option<std::net::TcpStream>) -> KillSwitch {
        KillSwitch(Arc::new(KillInner {
            socket: Mutex::new(socket),
            killed: Notify::new(),
        }))
    }

    /// Resets the connection: the serving task drops it and the socket closes with RST.
    pub(crate) fn reset(&self) {
        let socket = self
            .0
            .socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(socket) = socket
            && let Ok(socket) = TcpStream::from_std(socket)
        {
            // Linger 0 on a non-blocking socket: the close below never blocks.
            let _ = socket.set_zero_linger();
        }
        self.0.killed.notify_one();
    }

    async fn killed(&self) {
        self.0.killed.notified().await;
    }
}

/// Accepts connections until the task running it is aborted.
pub(crate) async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, app: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    connections.spawn(serve_connection(tcp, tls.clone(), app.clone()));
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::debug!(error = %err, "sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(tcp: TcpStream, tls: Option<TlsAcceptor>, app: Router) {
    let _ = tcp.set_nodelay(true);
    let (tcp, kill) = with_kill_switch(tcp);
    let Some(tcp) = tcp else { return };
    match tls {
        None => serve_io(tcp, kill, app).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => serve_io(stream, kill, app).await,
                Ok(Err(err)) => tracing::debug!(error = %err, "sim: TLS handshake failed"),
                Err(_) => tracing::debug!("sim: TLS handshake timed out"),
            }
        }
    }
}

/// Keeps a duplicate of the socket for the kill switch (a dup shares the socket, so
/// `SO_LINGER` set on it applies to the connection).
fn with_kill_switch(tcp: TcpStream) -> (Option<TcpStream>, KillSwitch) {
    let Ok(std) = tcp.into_std() else {
        return (None, KillSwitch::new(None));
    };
    let dup = std.try_clone().ok();
    (TcpStream::from_std(std).ok(), KillSwitch::new(dup))
}

async fn serve_io<I>(io: I, kill: KillSwitch, app: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let kill = kill.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(kill.clone());
            app.clone().oneshot(request)
        })
    };
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = connection => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "sim: connection ended with an error");
            }
        }
        () = kill.killed() => {}
    }
}
