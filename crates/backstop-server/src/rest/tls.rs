//! TLS for the shared gRPC and REST listener.
//!
//! tonic's own TLS setting offers only `h2` in ALPN, so a client that asks
//! for `http/1.1` alone (curl `--http1.1`, Python's urllib) fails the
//! handshake. This acceptor offers both and hands the finished TLS streams
//! to the server, which then speaks whichever protocol was agreed.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    },
    server::TlsStream,
    TlsAcceptor,
};
use tokio_stream::wrappers::ReceiverStream;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes that may wait for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// Builds an acceptor for the PEM certificate chain and private key that
/// offers `h2` and `http/1.1` in ALPN.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("invalid PEM in the TLS certificate")?;
    if chain.is_empty() {
        anyhow::bail!("the TLS certificate file has no CERTIFICATE block");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("invalid PEM in the TLS key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol versions available")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS key does not match the certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP connections on `listener` and yields them once their TLS
/// handshake is done. Handshakes run concurrently, so a slow client does
/// not hold up others. The listener closes when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(peer = %peer, error = %error, "TLS handshake failed")
                    }
                    Err(_) => tracing::info!(
                        peer = %peer,
                        timeout_s = HANDSHAKE_TIMEOUT.as_secs(),
                        "TLS handshake timed out"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
