//! TLS on loopback for the TLS tests: [`Pki`], a certificate authority made at test time
//! (rcgen) that issues server and client certificates (good, for another name, expired), and
//! [`TlsServer`], a tokio-rustls acceptor in front of a hyper server (HTTP/2 and HTTP/1, by
//! the preface) that records what it saw: the SNI of every ClientHello, the handshakes
//! completed and refused, the ALPN protocol chosen, the client certificates, the bytes read
//! after each handshake, and the requests. Included with `#[path]`.
#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use persistent_connection::http::rustls::{
    self, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::watch,
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;
use tower::util::BoxCloneService;

// === Certificates ===

/// A certificate chain and its key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A certificate authority made at test time.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        Self { issuer }
    }

    /// The CA's certificate.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A root store that trusts this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.certificate()).expect("the CA certificate");
        roots
    }

    /// A server certificate for `names`, valid now.
    pub fn server(&self, names: &[&str]) -> Identity {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    /// A server certificate for `names` that expired at the start of 2020.
    pub fn expired_server(&self, names: &[&str]) -> Identity {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, true)
    }

    /// A client certificate for `name`.
    pub fn client(&self, name: &str) -> Identity {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> Identity {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().expect("a key");
        let certificate = params.signed_by(&key, &self.issuer).expect("a certificate");
        Identity {
            chain: vec![certificate.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

/// The provider of the test servers.
pub fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)] // rustls deprecates ring's provider (no post-quantum key exchange)
    Arc::new(rustls::crypto::ring::default_provider())
}

// === The server ===

/// What a [`TlsServer`] has seen so far.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// TCP connections accepted.
    pub accepted: usize,
    /// The SNI of every ClientHello (`None`: the client sent none).
    pub hellos: Vec<Option<String>>,
    /// Handshakes completed.
    pub handshakes: usize,
    /// Handshakes that failed, with the server's error.
    pub refused: Vec<String>,
    /// The ALPN protocol chosen in each completed handshake.
    pub alpn: Vec<Option<String>>,
    /// Whether the client presented a certificate, per completed handshake.
    pub client_certificates: Vec<bool>,
    /// Bytes read from clients after their handshakes (HTTP bytes).
    pub bytes: u64,
    /// The requests: method, URI (with scheme and authority as the server saw them) and
    /// `host=` the `Host` header, if there was one.
    pub requests: Vec<String>,
}

/// What the server's HTTP side is.
#[derive(Clone)]
pub enum App {
    /// Answers every request with `"<name> <URI>"`.
    Echo(String),
    /// A gRPC service (over HTTP/2); see [`App::grpc`].
    Grpc(BoxCloneService<Request<Incoming>, Response<tonic::body::Body>, Infallible>),
}

/// How a [`TlsServer`] is set up.
pub struct Setup {
    pub identity: Identity,
    /// The ALPN protocols the server offers (empty: it ignores the client's ALPN).
    pub alpn: Vec<&'static str>,
    /// Require a client certificate issued by this CA.
    pub client_ca: Option<RootCertStore>,
    pub app: App,
}

impl Setup {
    /// A server with `identity` that speaks HTTP/2 and HTTP/1.1 and asks for no client
    /// certificate, answering with [`App::Echo`].
    pub fn echo(name: &str, identity: Identity) -> Self {
        Self {
            identity,
            alpn: vec!["h2", "http/1.1"],
            client_ca: None,
            app: App::Echo(name.to_owned()),
        }
    }
}

/// A TLS server on a free port of 127.0.0.1.
pub struct TlsServer {
    pub addr: SocketAddr,
    seen: Arc<watch::Sender<Seen>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Records the SNI of every ClientHello, and serves the one certificate.
#[derive(Debug)]
struct Recorder {
    key: Arc<CertifiedKey>,
    seen: Arc<watch::Sender<Seen>>,
}

impl ResolvesServerCert for Recorder {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_owned);
        self.seen.send_modify(|seen| seen.hellos.push(name));
        Some(self.key.clone())
    }
}

impl TlsServer {
    pub async fn start(setup: Setup) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let seen = Arc::new(watch::Sender::new(Seen::default()));
        let provider = provider();
        let key = CertifiedKey::from_der(setup.identity.chain, setup.identity.key, &provider)
            .expect("the server's key");
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match setup.client_ca {
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .expect("a client verifier"),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(Recorder {
            key: Arc::new(key),
            seen: seen.clone(),
        }));
        config.alpn_protocols = setup.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let server = Self {
            addr,
            seen: seen.clone(),
            tasks: tasks.clone(),
        };
        let app = setup.app;
        let accept_tasks = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                seen.send_modify(|seen| seen.accepted += 1);
                let (acceptor, seen, app) = (acceptor.clone(), seen.clone(), app.clone());
                let connection = tokio::spawn(async move {
                    serve(acceptor.accept(tcp).into_fallible().await, seen, app).await;
                });
                accept_tasks.lock().unwrap().push(connection);
            }
        });
        tasks.lock().unwrap().push(accept);
        server
    }

    /// A snapshot of what the server has seen.
    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Waits (at most `bound`, else panics) until `predicate` holds of what the server saw.
    pub async fn wait_for(
        &self,
        bound: Duration,
        what: &str,
        predicate: impl FnMut(&Seen) -> bool,
    ) {
        let mut seen = self.seen.subscribe();
        if tokio::time::timeout(bound, seen.wait_for(predicate))
            .await
            .is_err()
        {
            panic!(
                "the server did not see {what} within {bound:?}: {:?}",
                self.seen()
            );
        }
    }

    /// Stops accepting and drops every connection (as if the process died).
    pub fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

type Accepted = Result<
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    (io::Error, tokio::net::TcpStream),
>;

/// Serves one accepted connection, or records why its handshake failed.
async fn serve(accepted: Accepted, seen: Arc<watch::Sender<Seen>>, app: App) {
    let tls = match accepted {
        Ok(tls) => tls,
        Err((error, mut tcp)) => {
            seen.send_modify(|seen| seen.refused.push(error.to_string()));
            // A lingering close: read what the client still sends (bounded) before closing,
            // so the alert already written reaches it rather than a reset.
            let mut sink = [0u8; 1024];
            let drain = async { while let Ok(1..) = tcp.read(&mut sink).await {} };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
            return;
        }
    };
    let (_, connection) = tls.get_ref();
    let alpn = connection
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let certified = connection
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    seen.send_modify(|seen| {
        seen.handshakes += 1;
        seen.alpn.push(alpn);
        seen.client_certificates.push(certified);
    });
    let io = Counted {
        io: tls,
        seen: seen.clone(),
    };
    let service = service_fn(move |request: Request<Incoming>| {
        let (seen, app) = (seen.clone(), app.clone());
        async move {
            let mut line = format!("{} {}", request.method(), request.uri());
            if let Some(host) = request.headers().get(http::header::HOST) {
                line.push_str(&format!(" host={}", host.to_str().unwrap_or("?")));
            }
            seen.send_modify(|seen| seen.requests.push(line));
            Ok::<_, Infallible>(match app {
                App::Echo(name) => {
                    let body = format!("{name} {}", request.uri());
                    Response::new(boxed(Full::new(Bytes::from(body))))
                }
                App::Grpc(mut grpc) => {
                    let response = tower::Service::call(&mut grpc, request)
                        .await
                        .unwrap_or_else(|never| match never {});
                    response.map(|body| {
                        UnsyncBoxBody::new(
                            body.map_err(|status| io::Error::other(status.to_string())),
                        )
                    })
                }
            })
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

type Body = UnsyncBoxBody<Bytes, io::Error>;

fn boxed(body: Full<Bytes>) -> Body {
    UnsyncBoxBody::new(body.map_err(|never| match never {}))
}

impl App {
    /// A gRPC service (a tonic-generated server, such as tonic-health's).
    pub fn grpc<S>(service: S) -> Self
    where
        S: tower::Service<
                Request<Incoming>,
                Response = Response<tonic::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        Self::Grpc(BoxCloneService::new(service))
    }
}

/// Counts the bytes read after the handshake.
struct Counted<T> {
    io: T,
    seen: Arc<watch::Sender<Seen>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            this.seen.send_modify(|seen| seen.bytes += read);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
