//! TLS for the HTTP connectors (features `tls`, `tls-aws-lc-rs`): [`TlsConfig`], what a
//! connector is given, and [`TlsError`], why a handshake failed.
//!
//! The handshake is part of the connection attempt (the connector's future), so the layer's
//! connect timeout bounds it, and a failed handshake is a failed attempt. The name verified in
//! the server's certificate, and sent as SNI, is never the dialed address: it is
//! [`TlsConfig::server_name`] if set, else the layer's
//! [server name](crate::PersistentConnectionLayer::server_name) (with
//! [`http2`](crate::PersistentConnectionLayer::http2) /
//! [`http1`](crate::PersistentConnectionLayer::http1)), else the host of the connector's
//! [origin](super::Http2Connector::origin). With discovery, the address dialed is a replica's
//! IP address while the identity to check is the service's name.

use std::{
    fmt, io,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use rustls::{
    AlertDescription, CertificateError, ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    sign::{CertifiedKey, SingleCertAndKey},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{Dial, Origin, stream::Stream};
use crate::{BoxError, InvalidSetting};

#[cfg(not(any(feature = "tls", feature = "tls-aws-lc-rs")))]
compile_error!(
    "persistent-connection's TLS needs a crypto provider: enable the feature `tls` (ring) or `tls-aws-lc-rs`"
);

/// The crate's crypto provider: aws-lc-rs with the feature `tls-aws-lc-rs`, else ring.
fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "tls-aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // rustls 0.23.48 deprecates its ring provider because ring has no post-quantum key
    // exchange; it still works, and is the one this crate's feature `tls` promises. For
    // post-quantum key exchange (X25519MLKEM768), use the feature `tls-aws-lc-rs`.
    #[cfg(not(feature = "tls-aws-lc-rs"))]
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// A client configuration builder with the crate's provider and rustls' safe protocol versions
/// (TLS 1.3 and 1.2).
fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // Only a provider without a cipher suite for any default version fails here; ring's
        // and aws-lc-rs's defaults cover both.
        .expect("the built-in crypto providers support TLS 1.2 and 1.3")
}

/// How a connector secures its connections with TLS: the roots (or verifier) that decide which
/// servers are trusted, an optional client certificate (mutual TLS), and an optional server
/// name. Give it to [`Http2Connector::tls`](super::Http2Connector::tls) or
/// [`Http1Connector::tls`](super::Http1Connector::tls).
///
/// The connector sets ALPN on its own copy of the configuration (`h2` for HTTP/2, `http/1.1`
/// for HTTP/1), replacing any set here. Requests get the `https` scheme.
///
/// Crypto comes from `ring` (feature `tls`), or `aws-lc-rs` (feature `tls-aws-lc-rs`, which
/// wins when both are on); a configuration from
/// [`from_client_config`](Self::from_client_config) keeps its own provider.
///
/// ```
/// # #[cfg(feature = "tls")]
/// # fn main() -> Result<(), persistent_connection::BoxError> {
/// use persistent_connection::http::{Http2Connector, TlsConfig, rustls};
/// # use bytes::Bytes; use http_body_util::Empty;
/// # let ca_der: rustls::pki_types::CertificateDer<'static> = rcgen::generate_simple_self_signed(["ca".to_owned()])?.cert.der().clone();
///
/// let mut roots = rustls::RootCertStore::empty();
/// roots.add(ca_der)?; // the private CA that signs the servers' certificates
/// let connector = Http2Connector::<Empty<Bytes>>::new().tls(TlsConfig::from_roots(roots));
/// # drop(connector);
/// # Ok(()) }
/// # #[cfg(not(feature = "tls"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// Where the trust comes from, for `Debug`.
    roots: &'static str,
    client_auth: bool,
}

impl TlsConfig {
    /// Trusts the certificate authorities in `roots` (a private CA, say), with the crate's
    /// crypto provider. An empty store trusts nobody: every handshake fails with an unknown
    /// issuer.
    pub fn from_roots(roots: RootCertStore) -> Self {
        let config = builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::new(Arc::new(config), "custom roots")
    }

    /// Trusts the certificate authorities of Mozilla's root program, compiled into the binary
    /// (webpki-roots; feature `tls-webpki-roots`).
    #[cfg(feature = "tls-webpki-roots")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls-webpki-roots")))]
    pub fn webpki_roots() -> Self {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut config = Self::from_roots(roots);
        config.roots = "webpki-roots";
        config
    }

    /// Verifies certificates the way the operating system does, with its trusted roots
    /// (rustls-platform-verifier; feature `tls-platform-verifier`). On Linux and other Unixes
    /// the roots are the system's certificate files, read now.
    ///
    /// # Errors
    ///
    /// The verifier's error, e.g. when the system has no root certificates at all.
    #[cfg(feature = "tls-platform-verifier")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls-platform-verifier")))]
    pub fn platform() -> Result<Self, rustls::Error> {
        let verifier = rustls_platform_verifier::Verifier::new(provider())?;
        let config = builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Self::new(Arc::new(config), "platform verifier"))
    }

    /// Uses `config` as it is (its provider, verifier, client certificate, versions...),
    /// except for ALPN, which the connector sets on a copy.
    pub fn from_client_config(config: Arc<ClientConfig>) -> Self {
        let client_auth = config.client_auth_cert_resolver.has_certs();
        let mut tls = Self::new(config, "caller's ClientConfig");
        tls.client_auth = client_auth;
        tls
    }

    fn new(config: Arc<ClientConfig>, roots: &'static str) -> Self {
        Self {
            config,
            server_name: None,
            roots,
            client_auth: false,
        }
    }

    /// Presents `cert_chain` (the client's certificate first, then any intermediates) and
    /// proves it holds `key`, to servers that ask for a client certificate (mutual TLS).
    ///
    /// # Errors
    ///
    /// [`InvalidSetting`] (setting `"client certificate"`) if the chain is empty, the key cannot
    /// be read by the crypto provider, or the key is not the certificate's.
    pub fn client_auth(
        mut self,
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, InvalidSetting> {
        let invalid = |why: String| {
            InvalidSetting::new(
                "client certificate",
                format!("invalid client certificate: {why}"),
            )
        };
        if cert_chain.is_empty() {
            return Err(invalid("the certificate chain is empty".to_owned()));
        }
        let certified = CertifiedKey::from_der(cert_chain, key, self.config.crypto_provider())
            .map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => {
                    invalid("the private key is not the certificate's".to_owned())
                }
                error => invalid(format!("the key or certificate cannot be used: {error}")),
            })?;
        Arc::make_mut(&mut self.config).client_auth_cert_resolver =
            Arc::new(SingleCertAndKey::from(certified));
        self.client_auth = true;
        Ok(self)
    }

    /// The name to verify in the server's certificate and to send as SNI, instead of the
    /// layer's server name. A DNS name (`"billing.internal"`) or an IP address.
    ///
    /// # Errors
    ///
    /// [`InvalidSetting`] (setting `"TLS server name"`) if `name` is neither.
    pub fn server_name(mut self, name: impl Into<String>) -> Result<Self, InvalidSetting> {
        let name = name.into();
        self.server_name = Some(parse_name(&name, "TlsConfig::server_name")?);
        Ok(self)
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("roots", &self.roots)
            .field(
                "server_name",
                &self.server_name.as_ref().map(ServerName::to_str),
            )
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

/// `name` as a TLS server name; `what` says where it came from.
fn parse_name(name: &str, what: &str) -> Result<ServerName<'static>, InvalidSetting> {
    ServerName::try_from(name.to_owned()).map_err(|_| {
        InvalidSetting::new(
            "TLS server name",
            format!(
                "invalid TLS server name {name:?} ({what}): expected a DNS name such as \"billing.internal\", or an IP address"
            ),
        )
    })
}

// === The connector's side ===

/// A connector's TLS settings: its client configuration with ALPN set, and the names to choose
/// from.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    /// Set on the [`TlsConfig`].
    name: Option<ServerName<'static>>,
    /// The layer's server name (set by `.http2()` / `.http1()`).
    layer_name: Option<String>,
    /// HTTP/2: the server must choose `h2`.
    require_h2: bool,
    /// The ALPN protocol offered.
    alpn: &'static str,
    config: TlsConfig,
}

impl Tls {
    /// HTTP/2 over `config`: ALPN `h2`, which the server must choose.
    pub(crate) fn h2(config: TlsConfig) -> Self {
        Self::new(config, "h2", true)
    }

    /// HTTP/1.1 over `config`: ALPN `http/1.1`.
    pub(crate) fn http1(config: TlsConfig) -> Self {
        Self::new(config, "http/1.1", false)
    }

    fn new(config: TlsConfig, alpn: &'static str, require_h2: bool) -> Self {
        let mut client = ClientConfig::clone(&config.config);
        client.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        Self {
            connector: TlsConnector::from(Arc::new(client)),
            name: config.server_name.clone(),
            layer_name: None,
            require_h2,
            alpn,
            config,
        }
    }

    /// Takes the layer's server name (used when the [`TlsConfig`] names none).
    pub(crate) fn name_layer(&mut self, server_name: Option<&str>) {
        if let Some(name) = server_name {
            self.layer_name = Some(name.to_owned());
        }
    }

    /// The handshake of one attempt to `address`: the [`TlsConfig`]'s server name, else the
    /// layer's, else the host of the configured `origin`; never the address dialed.
    pub(crate) fn handshake<A: Dial>(
        &self,
        origin: Option<&Origin>,
        address: &A,
    ) -> Result<Handshake, BoxError> {
        let address = address.authority();
        let name = match (&self.name, &self.layer_name, origin) {
            (Some(name), _, _) => name.clone(),
            (None, Some(layer), _) => parse_name(layer, "the layer's server name")?,
            (None, None, Some(origin)) => {
                let host = origin.authority.host();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                parse_name(host, "the connector's origin")?
            }
            (None, None, None) => {
                return Err(InvalidSetting::new(
                    "TLS server name",
                    format!(
                        "TLS to {address} needs the server's name, to verify its certificate and send as SNI: \
                         set the layer's server_name, TlsConfig::server_name, or the connector's origin"
                    ),
                )
                .into());
            }
        };
        Ok(Handshake {
            connector: self.connector.clone(),
            name,
            address,
            require_h2: self.require_h2,
            alpn: self.alpn,
            failure: Arc::new(OnceLock::new()),
        })
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("config", &self.config)
            .field("layer_name", &self.layer_name)
            .field("require_h2", &self.require_h2)
            .finish()
    }
}

/// The TLS handshake of one attempt: the name to verify and the address, for the error.
pub(crate) struct Handshake {
    connector: TlsConnector,
    name: ServerName<'static>,
    address: String,
    require_h2: bool,
    alpn: &'static str,
    /// The first rustls error of the connection after the handshake (see [`TlsIo`]).
    failure: Arc<OnceLock<rustls::Error>>,
}

impl Handshake {
    /// Performs the handshake over `tcp`; for HTTP/2, checks that the server chose `h2`.
    pub(crate) async fn run(&self, tcp: TcpStream) -> Result<Stream, BoxError> {
        let tls = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|error| {
                let cause = match rustls_error_in_io(&error) {
                    Some(rustls) => Cause::Rustls(rustls.clone()),
                    None => Cause::Io(error),
                };
                self.error(cause)
            })?;
        if self.require_h2 {
            let chosen = tls.get_ref().1.alpn_protocol();
            if chosen != Some(b"h2") {
                let chosen = chosen.map(<[u8]>::to_vec);
                return Err(self.error(Cause::NoH2 { chosen }).into());
            }
        }
        Ok(Stream::Tls(Box::new(TlsIo {
            stream: tls,
            failure: self.failure.clone(),
        })))
    }

    /// `error` (from after the handshake, e.g. waiting for the server's HTTP/2 preface) as a
    /// [`TlsError`] if a rustls error caused it: with TLS 1.3 the server checks the client's
    /// certificate after the client has finished its handshake, so a refusal arrives as an
    /// alert on the first read.
    pub(crate) fn explain(&self, error: BoxError) -> BoxError {
        match rustls_error_in(&*error).or_else(|| self.failure.get()) {
            Some(rustls) => Box::new(self.error(Cause::Rustls(rustls.clone()))),
            None => error,
        }
    }

    fn error(&self, cause: Cause) -> TlsError {
        TlsError {
            server_name: self.name.to_str().into_owned(),
            address: self.address.clone(),
            alpn: self.alpn,
            cause,
        }
    }
}

/// A TLS stream that keeps its first rustls error: hyper's HTTP/2 (h2) keeps only the text of
/// an I/O error, so the error that ended a connection would lose its type on the way up.
/// Only the error path does anything more than pass the call on.
pub(crate) struct TlsIo {
    stream: TlsStream<TcpStream>,
    failure: Arc<OnceLock<rustls::Error>>,
}

impl TlsIo {
    fn keep<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(error)) = &result {
            if let Some(rustls) = rustls_error_in_io(error) {
                let _ = self.failure.set(rustls.clone());
            }
        }
        result
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.keep(result)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.keep(result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        this.keep(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.keep(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.keep(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The rustls error in `error`'s chain. An `io::Error`'s `source()` skips the error it wraps
/// (tokio-rustls and hyper wrap rustls' errors in one), so each `io::Error` is opened too.
fn rustls_error_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    // Bounded: a source chain is short; a cyclic one (a bug elsewhere) must not hang us.
    for _ in 0..32 {
        let error = next?;
        if let Some(rustls) = error.downcast_ref::<rustls::Error>() {
            return Some(rustls);
        }
        if let Some(rustls) = error
            .downcast_ref::<io::Error>()
            .and_then(rustls_error_in_io)
        {
            return Some(rustls);
        }
        next = error.source();
    }
    None
}

/// The rustls error an `io::Error` wraps, if any.
fn rustls_error_in_io(error: &io::Error) -> Option<&rustls::Error> {
    let inner = error.get_ref()?;
    inner.downcast_ref::<rustls::Error>().or_else(|| {
        inner
            .downcast_ref::<io::Error>()
            .and_then(rustls_error_in_io)
    })
}

// === TlsError ===

/// A failed TLS handshake with a server: a failed connection attempt.
///
/// Its text names the server name checked, the address dialed and the reason, e.g.
/// `TLS handshake with "billing" at 127.0.0.1:8443 failed: the certificate is not valid for
/// "billing" (it is for "other.test")`. When rustls refused the handshake (an unknown issuer,
/// a certificate not valid for the name or expired, an alert from the server...), the
/// [`rustls::Error`] is its [`source`](std::error::Error::source) and
/// [`rustls_error`](Self::rustls_error); it is found in a
/// [`ConnectError`](crate::ConnectError)'s source chain:
///
/// ```
/// use persistent_connection::{ConnectError, http::{TlsError, rustls}};
///
/// /// Whether the attempt failed because the server's certificate has expired.
/// fn expired(error: &ConnectError) -> bool {
///     let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
///     while let Some(error) = next {
///         if let Some(tls) = error.downcast_ref::<TlsError>() {
///             return matches!(
///                 tls.rustls_error(),
///                 Some(rustls::Error::InvalidCertificate(
///                     rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
///                 ))
///             );
///         }
///         next = error.source();
///     }
///     false
/// }
/// # let _ = expired;
/// ```
#[derive(Debug)]
pub struct TlsError {
    server_name: String,
    address: String,
    /// The ALPN protocol offered.
    alpn: &'static str,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    /// rustls refused the handshake, or the server sent an alert.
    Rustls(rustls::Error),
    /// The connection failed during the handshake.
    Io(io::Error),
    /// The HTTP/2 connector needs `h2`; the server chose another protocol, or none.
    NoH2 { chosen: Option<Vec<u8>> },
}

impl TlsError {
    /// The name verified in the server's certificate (and sent as SNI).
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The address dialed.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The rustls error that refused the handshake, if rustls refused it (not for a
    /// connection closed during the handshake, nor for a server that did not choose `h2`).
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match &self.cause {
            Cause::Rustls(error) => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake with {:?} at {} failed: ",
            self.server_name, self.address
        )?;
        match &self.cause {
            Cause::Rustls(error) => rustls_reason(error, &self.server_name, self.alpn, f),
            Cause::Io(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("the server closed the connection during the handshake")
            }
            Cause::Io(error) => write!(f, "{error}"),
            Cause::NoH2 { chosen } => {
                f.write_str("the server did not choose HTTP/2 (\"h2\") in ALPN ")?;
                match chosen {
                    Some(chosen) => write!(f, "(it chose {:?})", String::from_utf8_lossy(chosen)),
                    None => f.write_str("(it chose no protocol)"),
                }
            }
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Rustls(error) => Some(error),
            Cause::Io(error) => Some(error),
            Cause::NoH2 { .. } => None,
        }
    }
}

/// Why rustls refused the handshake with `name`, in words.
fn rustls_reason(
    error: &rustls::Error,
    name: &str,
    alpn: &str,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    use rustls::Error;
    match error {
        Error::InvalidCertificate(error) => certificate_reason(error, name, f),
        Error::AlertReceived(AlertDescription::NoApplicationProtocol) => write!(
            f,
            "the server does not speak {alpn:?}, the protocol offered in ALPN (alert NoApplicationProtocol)"
        ),
        Error::AlertReceived(AlertDescription::CertificateRequired) => f.write_str(
            "the server requires a client certificate (alert CertificateRequired): see TlsConfig::client_auth",
        ),
        Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied),
        ) => write!(
            f,
            "the server refused the handshake (alert {alert:?}): it did not accept our client certificate"
        ),
        Error::AlertReceived(alert) => {
            write!(f, "the server refused the handshake (alert {alert:?})")
        }
        Error::InvalidMessage(_) => write!(
            f,
            "the server did not answer in TLS ({error}); does it serve plain text?"
        ),
        error => write!(f, "{error}"),
    }
}

/// Why the server's certificate was refused, in words.
fn certificate_reason(
    error: &CertificateError,
    name: &str,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    match error {
        CertificateError::UnknownIssuer => {
            f.write_str("the certificate is not signed by a trusted authority (unknown issuer)")
        }
        CertificateError::NotValidForName => {
            write!(f, "the certificate is not valid for {name:?}")
        }
        CertificateError::NotValidForNameContext { presented, .. } => {
            write!(f, "the certificate is not valid for {name:?} ")?;
            match presented.as_slice() {
                [] => f.write_str("(it names no DNS name or IP address)"),
                presented => {
                    f.write_str("(it is for ")?;
                    for (i, presented) in presented.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{:?}", presented_name(presented))?;
                    }
                    f.write_str(")")
                }
            }
        }
        CertificateError::Expired => f.write_str("the certificate has expired"),
        CertificateError::ExpiredContext { not_after, .. } => write!(
            f,
            "the certificate has expired (it was valid until {})",
            utc(not_after.as_secs())
        ),
        CertificateError::NotValidYet => f.write_str("the certificate is not valid yet"),
        CertificateError::NotValidYetContext { not_before, .. } => write!(
            f,
            "the certificate is not valid yet (it is valid from {})",
            utc(not_before.as_secs())
        ),
        CertificateError::Revoked => f.write_str("the certificate has been revoked"),
        CertificateError::BadSignature => f.write_str("the certificate's signature is invalid"),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            f.write_str("the certificate is not for server authentication")
        }
        error => write!(f, "the certificate was refused: {error}"),
    }
}

/// A name presented in a certificate, as webpki reports it (`DnsName("a.test")`,
/// `IpAddress(10.0.0.7)`), without the wrapping.
fn presented_name(presented: &str) -> &str {
    let unwrapped = presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        });
    unwrapped.unwrap_or(presented)
}

/// `secs` since the Unix epoch as a UTC date and time, `2020-01-01 00:00:00 UTC`.
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_577_836_800 + 3_723), "2020-01-01 01:02:03 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn presented_names_lose_their_wrapping() {
        assert_eq!(presented_name("DnsName(\"other.test\")"), "other.test");
        assert_eq!(presented_name("IpAddress(10.0.0.7)"), "10.0.0.7");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn invalid_names_are_refused_with_a_clear_error() {
        let config = TlsConfig::from_roots(RootCertStore::empty());
        let error = config.server_name("not a name").unwrap_err();
        assert_eq!(error.setting(), "TLS server name");
        assert!(
            error
                .to_string()
                .contains("invalid TLS server name \"not a name\""),
            "{error}"
        );
    }

    #[test]
    fn an_empty_client_certificate_chain_is_refused() {
        let config = TlsConfig::from_roots(RootCertStore::empty());
        let key = PrivateKeyDer::Pkcs8(Vec::new().into());
        let error = config.client_auth(Vec::new(), key).unwrap_err();
        assert_eq!(error.setting(), "client certificate");
        assert!(error.to_string().contains("chain is empty"), "{error}");
    }

    /// Without a name anywhere, an attempt fails with an error that says how to give one; the
    /// dialed address is never taken for the name.
    #[test]
    fn no_server_name_is_an_error_not_the_address() {
        let tls = Tls::h2(TlsConfig::from_roots(RootCertStore::empty()));
        let address: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let error = tls.handshake(None, &address).err().unwrap();
        assert!(
            error
                .to_string()
                .contains("TLS to 127.0.0.1:8443 needs the server's name"),
            "{error}"
        );

        let mut unfit = tls.clone();
        unfit.name_layer(Some("billing service"));
        let error = unfit.handshake(None, &address).err().unwrap();
        assert!(
            error
                .to_string()
                .contains("invalid TLS server name \"billing service\" (the layer's server name)"),
            "{error}"
        );

        let mut named = tls.clone();
        named.name_layer(Some("billing"));
        let handshake = named.handshake(None, &address).unwrap();
        assert_eq!(handshake.name.to_str(), "billing");

        let origin = Origin::parse("https://api.internal:8443").unwrap();
        let handshake = tls.handshake(Some(&origin), &address).unwrap();
        assert_eq!(handshake.name.to_str(), "api.internal");

        let explicit = Tls::h2(
            TlsConfig::from_roots(RootCertStore::empty())
                .server_name("other.internal")
                .unwrap(),
        );
        let mut explicit = explicit;
        explicit.name_layer(Some("billing"));
        let handshake = explicit.handshake(Some(&origin), &address).unwrap();
        assert_eq!(handshake.name.to_str(), "other.internal");
    }
}
