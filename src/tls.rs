//! The HTTPS listener: rustls server configuration from PEM files, and a listener that
//! hands `axum::serve` only connections whose TLS handshake has finished.
//!
//! Responsible for: loading `[tls] cert_file`/`key_file` (TLS 1.2 and 1.3 only, as rustls
//! offers) and loading them again when they change (cert-manager rotates them: every
//! handshake checks the files' stamps, two `stat`s against a handshake's far larger
//! cost; a pair that fails to load is logged and the last good one kept), and running
//! handshakes concurrently, each bounded in time, so that a client that stalls its
//! handshake holds up nobody else.
//!
//! Not responsible for: HTTP (axum serves the streams this yields).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::RwLock;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::reload::Stamp;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the HTTP server to take them.
const READY_BACKLOG: usize = 128;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("no PEM certificate in {0}")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) in {0}")]
    NoKey(PathBuf),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the certificate and key cannot be used together")]
    Rustls(#[source] rustls::Error),
}

/// Builds the server configuration from a PEM certificate chain and a PEM private key,
/// which are re-read whenever they change.
pub(crate) fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = ReloadingCertificate::load(cert_file, key_file, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certificate));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The serving certificate, re-read when its files change.
#[derive(Debug)]
struct ReloadingCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: (Option<Stamp>, Option<Stamp>),
    key: Arc<CertifiedKey>,
}

impl ReloadingCertificate {
    fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ReloadingCertificate, TlsError> {
        let loaded = load_pair(cert_file, key_file, provider)?;
        Ok(ReloadingCertificate {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider: Arc::clone(provider),
            current: RwLock::new(loaded),
        })
    }

    fn stamps(&self) -> (Option<Stamp>, Option<Stamp>) {
        (
            Stamp::of(&self.cert_file).ok(),
            Stamp::of(&self.key_file).ok(),
        )
    }

    /// The current pair, after loading the files again if they changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let stamps = self.stamps();
        {
            let current = self.current.read().expect("certificate lock");
            if current.stamps == stamps {
                return Arc::clone(&current.key);
            }
        }
        let mut current = self.current.write().expect("certificate lock");
        if current.stamps != stamps {
            match load_pair(&self.cert_file, &self.key_file, &self.provider) {
                Ok(loaded) => {
                    tracing::info!(cert_file = %self.cert_file.display(), "serving certificate reloaded");
                    *current = loaded;
                }
                Err(e) => {
                    // Remember the stamps so a broken pair is reported once, not per handshake;
                    // the next change is tried again.
                    tracing::warn!(error = %e, "cannot reload the serving certificate; keeping the last good one");
                    current.stamps = stamps;
                }
            }
        }
        Arc::clone(&current.key)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    // Stamped before reading: a change during the read is seen next time.
    let stamps = (Stamp::of(cert_file).ok(), Stamp::of(key_file).ok());
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert_file)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key_pem = read(key_file)?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey(key_file.to_path_buf()))?;
    let key = CertifiedKey::from_der(certs, key, provider).map_err(TlsError::Rustls)?;
    Ok(Loaded {
        stamps,
        key: Arc::new(key),
    })
}

/// A listener whose connections have finished their TLS handshake.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`, handshaking each connection in a task of its own.
    pub(crate) fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(READY_BACKLOG);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local_addr,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task never ends on its own; if it is gone, there is nothing to serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
