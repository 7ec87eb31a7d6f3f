//! The HTTPS listener: served with the configured pair, and the pair re-read when
//! cert-manager replaces it, without a restart.

use std::sync::Arc;

use crate::support::*;

/// Whether a TLS handshake with the gate succeeds for a client trusting only `ca_pem`.
async fn handshake(gate: &TestGate, ca_pem: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = gate.url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_serving_certificate_is_reloaded_when_its_files_change() {
    let gate = spawn_https_gate(&[]).await;
    let first_ca = gate.gate_ca.clone().unwrap();
    handshake(&gate, &first_ca)
        .await
        .expect("served with the first certificate");

    let second_ca = serving_certificate(gate.files());
    handshake(&gate, &second_ca)
        .await
        .expect("served with the new certificate, no restart");
    let refused = handshake(&gate, &first_ca).await.unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");

    // A broken replacement is refused and the last good pair keeps serving.
    std::fs::write(gate.files().join("gate.crt"), "not a certificate").unwrap();
    handshake(&gate, &second_ca)
        .await
        .expect("the last good certificate still serves");
}
