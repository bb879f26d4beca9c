//! HTTP/2 over TLS through a persistent connection, on loopback, in well under a second.
//!
//! At start the example makes its own certificate authority and two server certificates
//! (rcgen): one for `billing`, and one for `other.test`. Two hyper HTTP/2 servers on
//! 127.0.0.1 sit behind TLS (tokio-rustls), one with each certificate.
//!
//! - The client dials the good server's IP address while verifying, and sending as SNI, the
//!   layer's server name `billing`; it sends three requests, which the server answers with the
//!   SNI it saw and the request's URI (`https://billing/...`).
//! - A second client dials the server whose certificate is for `other.test`: its attempt
//!   fails, and the error says why (the rustls error is in its source chain).
//!
//! ```text
//! cargo run --example tls --features tls
//! ```

use std::{convert::Infallible, error::Error, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use persistent_connection::{
    BoxError, Event, PersistentConnectionLayer,
    http::{
        Http2Connection, Http2Connector, TlsConfig, TlsError,
        rustls::{
            self, RootCertStore, ServerConfig,
            pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
        },
    },
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

/// The service's name: what the client verifies, whatever address it dials.
const NAME: &str = "billing";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A certificate authority made now, and a certificate for each server.
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone())?;

    let good = serve(issue(&ca, NAME)?).await?;
    let bad = serve(issue(&ca, "other.test")?).await?;
    println!("servers: {good} (certificate for {NAME:?}), {bad} (certificate for \"other.test\")");

    // The client: dials 127.0.0.1, verifies "billing".
    let connector = Http2Connector::<Empty<Bytes>>::new().tls(TlsConfig::from_roots(roots.clone()));
    let mut svc = PersistentConnectionLayer::fixed_address(good)
        .server_name(NAME)
        .retry_delay(|| Duration::from_millis(200))
        .on_event(
            |event: &Event<SocketAddr, Http2Connection<_>>| match event {
                Event::Connected(_) => println!("client: connected"),
                Event::FailedToConnect(error) => println!("client: failed to connect: {error}"),
                _ => {}
            },
        )
        .http2(connector);
    for path in ["/invoices/1", "/invoices/2", "/invoices/3"] {
        let request = Request::get(path).body(Empty::new())?;
        let response = svc.ready().await?.call(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        println!("client: GET {path} -> {}", String::from_utf8_lossy(&body));
    }
    svc.handle().close().await;

    // A server whose certificate is for another name: the attempt fails and says why.
    let refused = PersistentConnectionLayer::fixed_address(bad)
        .server_name(NAME)
        .retry_delay(|| Duration::from_millis(200))
        .http2(Http2Connector::<Empty<Bytes>>::new().tls(TlsConfig::from_roots(roots)));
    let handle = refused.handle();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        handle.connected_or_failed_to_connect(),
    )
    .await
    .map_err(|_| "no outcome of the attempt within 10 s")?;
    let error = match outcome {
        Ok(_) => return Err("connected to a server with a certificate for another name".into()),
        Err(error) => error,
    };
    println!("client: the attempt against {bad} failed: {error}");
    let mut next: Option<&(dyn Error + 'static)> = Some(&error);
    while let Some(cause) = next {
        if let Some(tls) = cause.downcast_ref::<TlsError>() {
            println!("client: the rustls error: {:?}", tls.rustls_error());
        }
        next = cause.source();
    }
    handle.close().await;
    println!("done");
    Ok(())
}

/// A server certificate for `name`, issued by `ca`.
fn issue(
    ca: &CertifiedIssuer<'_, KeyPair>,
    name: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BoxError> {
    let key = KeyPair::generate()?;
    let certificate = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, ca)?;
    let key = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    Ok((vec![certificate.der().clone()], key))
}

/// An HTTP/2 server behind TLS on a free port of 127.0.0.1, answering each request with the
/// SNI it saw and the request's URI. It runs until the example ends.
async fn serve(
    (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> Result<SocketAddr, BoxError> {
    #[allow(deprecated)] // rustls deprecates ring's provider (no post-quantum key exchange)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(error) => {
                        println!("server {address}: handshake with {peer} failed: {error}");
                        return;
                    }
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                println!("server {address}: TLS from {peer}, SNI {sni:?}");
                let service = service_fn(move |request: Request<Incoming>| {
                    let body = format!("SNI {sni:?}, URI {}", request.uri());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(address)
}
