//! TLS for the HTTP connectors (feature `tls`), against tokio-rustls servers on 127.0.0.1 whose
//! certificates are made at test time (rcgen): a good server serves a tonic client and hyper
//! clients over HTTP/2 and HTTP/1, with the layer's server name as SNI while the client dials
//! 127.0.0.1; a server whose certificate is for another name, from an unknown CA or expired,
//! or that does not choose `h2`, never reaches `Connected` and receives no request byte, and
//! the attempt's error says why (its source chain keeps the rustls error); a server that
//! requires a client certificate takes ours and refuses a client without one; a catalog that
//! moves the client to a replica with a bad certificate leaves it waiting and retrying, and
//! moving back to a good replica connects; the connect timeout bounds the handshake.
#![cfg(feature = "tls")]

#[path = "support/grpc.rs"]
mod grpc;
mod support;
#[path = "support/tls_server.rs"]
mod tls_server;

use std::{error::Error as _, net::SocketAddr, sync::Arc, time::Duration};

use persistent_connection::{
    ConnectError, ConnectErrorKind, PersistentConnection, PersistentConnectionLayer,
    discovery::LocalCatalog,
    http::{
        Http1Connection, Http1Connector, Http2Connection, Http2Connector, TlsConfig, TlsError,
        rustls::{self, AlertDescription, CertificateError, ClientConfig, RootCertStore},
    },
};
use support::{
    Body, Events, SOON, connected, disconnected, failed, get_ok, recorder, spawn_get, within,
};
use tls_server::{App, Pki, Setup, TlsServer};
use tonic_health::{ServingStatus, pb::health_check_response::ServingStatus as Status};

/// The layer's server name: the name in the good certificates.
const NAME: &str = "billing";
/// The retry delay of every layer here.
const RETRY: Duration = Duration::from_millis(50);

type H2 = PersistentConnection<Http2Connection<Body>>;

/// A persistent HTTP/2 connection over TLS to `addr`, named [`NAME`].
fn http2(addr: SocketAddr, tls: TlsConfig) -> (H2, Events) {
    let (hook, events) = recorder();
    let svc = PersistentConnectionLayer::fixed_address(addr)
        .server_name(NAME)
        .retry_delay(|| RETRY)
        .connect_timeout(SOON)
        .on_event(hook)
        .http2(Http2Connector::new().tls(tls));
    (svc, events)
}

/// The [`TlsError`] in `error`'s source chain.
fn tls_error(error: &ConnectError) -> &TlsError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        if let Some(tls) = cause.downcast_ref::<TlsError>() {
            return tls;
        }
        next = cause.source();
    }
    panic!("no TlsError in the source chain of {error}");
}

/// The rustls error a [`TlsError`] has as its `source()`.
fn rustls_source(tls: &TlsError) -> &rustls::Error {
    let source = tls.source().expect("the TlsError has a source");
    let rustls = source
        .downcast_ref::<rustls::Error>()
        .unwrap_or_else(|| panic!("the source of {tls} is not a rustls error: {source:?}"));
    assert_eq!(Some(rustls), tls.rustls_error());
    rustls
}

/// Whether every ClientHello the server saw (at least one) sent `name` as SNI.
fn sni_is(seen: &tls_server::Seen, name: &str) -> bool {
    !seen.hellos.is_empty() && seen.hellos.iter().all(|sni| sni.as_deref() == Some(name))
}

/// The outcome of the layer's next attempt, expected to fail.
async fn next_failure<S>(svc: &PersistentConnection<S>) -> ConnectError
where
    S: Clone + Send + 'static,
{
    let outcome = within(
        SOON,
        "the next attempt",
        svc.handle().connected_or_failed_to_connect(),
    )
    .await;
    match outcome {
        Ok(_) => panic!("connected to a server that should have been refused"),
        Err(error) => error,
    }
}

/// Against a server presenting `identity`, with `roots` trusted: the attempt fails with
/// `reason` (after `TLS handshake with "billing" at <addr> failed: `), whose rustls error
/// `check` accepts; the client tries again (the server sees a second ClientHello, with SNI
/// `billing`), never reaches `Connected`, and the server completes no handshake and reads no
/// request byte.
async fn refused(
    identity: tls_server::Identity,
    roots: RootCertStore,
    reason: &str,
    check: impl Fn(&rustls::Error) -> bool,
) {
    let server = TlsServer::start(Setup::echo("bad", identity)).await;
    let (svc, events) = http2(server.addr, TlsConfig::from_roots(roots));

    let error = next_failure(&svc).await;
    assert_eq!(error.kind(), ConnectErrorKind::Connect);
    assert_eq!(
        error.to_string(),
        format!(
            "connect failed: TLS handshake with \"billing\" at {} failed: {reason}",
            server.addr
        )
    );
    let tls = tls_error(&error);
    assert_eq!(tls.server_name(), NAME);
    assert_eq!(tls.address(), server.addr.to_string());
    let rustls = rustls_source(tls);
    assert!(check(rustls), "unexpected rustls error {rustls:?}");

    // The client keeps trying, with the server name as SNI, and never gets through; the
    // server sees the client's alert.
    server
        .wait_for(SOON, "a second attempt, and a refusal", |seen| {
            seen.accepted >= 2 && !seen.refused.is_empty()
        })
        .await;
    let seen = server.seen();
    assert!(sni_is(&seen, NAME), "{seen:?}");
    assert_eq!(seen.handshakes, 0, "{seen:?}");
    assert_eq!(
        seen.bytes, 0,
        "no request byte reached the server: {seen:?}"
    );
    assert!(seen.requests.is_empty(), "{seen:?}");
    assert_eq!(events.count(connected), 0, "events: {:?}", events.seen());
    assert!(events.count(failed) >= 1, "events: {:?}", events.seen());
    assert!(svc.handle().current_connection().is_none());
    within(SOON, "close", svc.handle().close()).await;
}

// === Good servers ===

/// A tonic generated client (tonic-health) over the layer with TLS: the check succeeds; the
/// server saw the layer's server name as SNI while the client dialed 127.0.0.1, chose `h2` in
/// ALPN, and got the request as `https://billing/...`.
#[tokio::test]
async fn a_tonic_client_checks_health_over_tls_with_the_server_name_as_sni() {
    let pki = Pki::new("test CA");
    let (_reporter, health) = grpc::health(ServingStatus::Serving).await;
    let server = TlsServer::start(Setup {
        identity: pki.server(&[NAME]),
        alpn: vec!["h2"],
        client_ca: None,
        app: App::grpc(health),
    })
    .await;
    assert_eq!(
        server.addr.ip(),
        std::net::Ipv4Addr::LOCALHOST,
        "the client dials 127.0.0.1"
    );

    let svc = PersistentConnectionLayer::fixed_address(server.addr)
        .server_name(NAME)
        .retry_delay(|| RETRY)
        .http2(Http2Connector::<tonic::body::Body>::new().tls(TlsConfig::from_roots(pki.roots())));
    let handle = svc.handle();
    let mut client = tonic_health::pb::health_client::HealthClient::new(svc);
    let response = within(SOON, "a health check", client.check(grpc::request()))
        .await
        .expect("the health check failed");
    assert_eq!(response.into_inner().status(), Status::Serving);

    let seen = server.seen();
    assert!(sni_is(&seen, NAME), "SNI is the server name: {seen:?}");
    assert_eq!((seen.accepted, seen.handshakes), (1, 1), "{seen:?}");
    assert_eq!(seen.alpn, [Some("h2".to_owned())]);
    assert_eq!(seen.requests.len(), 1, "{seen:?}");
    assert!(
        seen.requests[0].starts_with("POST https://billing/grpc.health.v1.Health/Check"),
        "{seen:?}"
    );
    assert!(seen.bytes > 0);
    drop(client);
    within(SOON, "close", handle.close()).await;
}

/// A hyper HTTP/2 client over TLS, configured with a caller's `ClientConfig` whose ALPN says
/// `http/1.1`: the connector offers `h2` on its own copy (the caller's is unchanged), and
/// concurrent requests share one TLS connection, with the `https` scheme.
#[tokio::test]
async fn hyper_http2_requests_share_one_tls_connection() {
    let pki = Pki::new("test CA");
    let server = TlsServer::start(Setup::echo("replica-1", pki.server(&[NAME]))).await;
    let mut config = ClientConfig::builder_with_provider(tls_server::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let (svc, mut events) = http2(server.addr, TlsConfig::from_client_config(config.clone()));

    let requests: Vec<_> = ["/a", "/b", "/c"]
        .into_iter()
        .map(|path| spawn_get(&svc, path))
        .collect();
    for (request, path) in requests.into_iter().zip(["/a", "/b", "/c"]) {
        let body = within(SOON, "a request", request).await.unwrap().unwrap();
        assert_eq!(body, format!("replica-1 https://billing{path}"));
    }
    let seen = server.seen();
    assert_eq!(
        (seen.accepted, seen.handshakes),
        (1, 1),
        "one TLS connection for every request: {seen:?}"
    );
    assert_eq!(seen.alpn, [Some("h2".to_owned())]);
    assert!(sni_is(&seen, NAME), "{seen:?}");
    assert_eq!(
        config.alpn_protocols,
        [b"http/1.1".to_vec()],
        "the caller's config is unchanged"
    );
    events.wait_for(connected, SOON).await;
    assert_eq!(events.count(connected), 1);
    within(SOON, "close", svc.handle().close()).await;
}

/// A hyper HTTP/1 client over TLS: ALPN `http/1.1`, SNI and `Host` the server name.
#[tokio::test]
async fn hyper_http1_requests_go_over_tls() {
    let pki = Pki::new("test CA");
    let server = TlsServer::start(Setup::echo("replica-1", pki.server(&[NAME]))).await;
    let (hook, mut events) = recorder();
    let mut svc: PersistentConnection<Http1Connection<Body>> =
        PersistentConnectionLayer::fixed_address(server.addr)
            .server_name(NAME)
            .retry_delay(|| RETRY)
            .on_event(hook)
            .http1(Http1Connector::new().tls(TlsConfig::from_roots(pki.roots())));

    assert_eq!(get_ok(&mut svc, "/one").await, "replica-1 /one");
    assert_eq!(get_ok(&mut svc, "/two").await, "replica-1 /two");
    let seen = server.seen();
    assert_eq!((seen.accepted, seen.handshakes), (1, 1), "{seen:?}");
    assert_eq!(seen.alpn, [Some("http/1.1".to_owned())]);
    assert!(sni_is(&seen, NAME), "{seen:?}");
    assert_eq!(
        seen.requests,
        ["GET /one host=billing", "GET /two host=billing"]
    );
    events.wait_for(connected, SOON).await;
    assert_eq!(events.count(connected), 1);
    within(SOON, "close", svc.handle().close()).await;
}

/// A name set on the TLS config is the one verified and sent as SNI, instead of the layer's
/// server name (which stays the requests' authority).
#[tokio::test]
async fn a_server_name_on_the_tls_config_overrides_the_layers() {
    let pki = Pki::new("test CA");
    let server =
        TlsServer::start(Setup::echo("replica-1", pki.server(&["billing.internal"]))).await;
    let tls = TlsConfig::from_roots(pki.roots())
        .server_name("billing.internal")
        .unwrap();
    let (mut svc, _events) = http2(server.addr, tls);

    assert_eq!(get_ok(&mut svc, "/x").await, "replica-1 https://billing/x");
    let seen = server.seen();
    assert!(sni_is(&seen, "billing.internal"), "{seen:?}");
    within(SOON, "close", svc.handle().close()).await;
}

// === Bad certificates ===

/// A certificate for another name: the attempt fails and says for which name it is.
#[tokio::test]
async fn a_certificate_for_another_name_is_a_failed_attempt() {
    let pki = Pki::new("test CA");
    refused(
        pki.server(&["other.test"]),
        pki.roots(),
        "the certificate is not valid for \"billing\" (it is for \"other.test\")",
        |error| {
            matches!(
                error,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            )
        },
    )
    .await;
}

/// A certificate from a CA the client does not trust.
#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_a_failed_attempt() {
    let trusted = Pki::new("trusted CA");
    let unknown = Pki::new("unknown CA");
    refused(
        unknown.server(&[NAME]),
        trusted.roots(),
        "the certificate is not signed by a trusted authority (unknown issuer)",
        |error| *error == rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
    )
    .await;
}

/// An expired certificate: the attempt fails and says until when it was valid.
#[tokio::test]
async fn an_expired_certificate_is_a_failed_attempt() {
    let pki = Pki::new("test CA");
    refused(
        pki.expired_server(&[NAME]),
        pki.roots(),
        "the certificate has expired (it was valid until 2020-01-01 00:00:00 UTC)",
        |error| {
            matches!(
                error,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            )
        },
    )
    .await;
}

/// The HTTP/2 connector refuses a server that does not choose `h2`: one that ignores ALPN
/// (the handshake completes, but no request byte is sent), and one that speaks only
/// `http/1.1` (it refuses the handshake).
#[tokio::test]
async fn a_server_that_does_not_choose_h2_fails_the_http2_attempt() {
    let pki = Pki::new("test CA");
    for (alpn, reason) in [
        (
            vec![],
            "the server did not choose HTTP/2 (\"h2\") in ALPN (it chose no protocol)",
        ),
        (
            vec!["http/1.1"],
            "the server does not speak \"h2\", the protocol offered in ALPN (alert NoApplicationProtocol)",
        ),
    ] {
        let mut setup = Setup::echo("http1-only", pki.server(&[NAME]));
        setup.alpn = alpn.clone();
        let server = TlsServer::start(setup).await;
        let (svc, events) = http2(server.addr, TlsConfig::from_roots(pki.roots()));

        let error = next_failure(&svc).await;
        assert_eq!(
            error.to_string(),
            format!(
                "connect failed: TLS handshake with \"billing\" at {} failed: {reason}",
                server.addr
            ),
            "server ALPN {alpn:?}"
        );
        let tls = tls_error(&error);
        if alpn.is_empty() {
            assert!(
                tls.rustls_error().is_none(),
                "not a rustls refusal: {tls:?}"
            );
        } else {
            assert_eq!(
                *rustls_source(tls),
                rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
            );
        }
        server
            .wait_for(SOON, "a second attempt", |seen| seen.accepted >= 2)
            .await;
        let seen = server.seen();
        assert_eq!(seen.bytes, 0, "no request byte: {seen:?}");
        assert!(seen.requests.is_empty(), "{seen:?}");
        assert_eq!(events.count(connected), 0, "events: {:?}", events.seen());
        within(SOON, "close", svc.handle().close()).await;
    }
}

// === Mutual TLS ===

/// A server that requires a client certificate from its CA takes the client that presents
/// one (and serves it), and refuses one without: that attempt fails saying so, never
/// reaches `Connected`, and sends no request.
#[tokio::test]
async fn a_server_requiring_a_client_certificate_takes_ours_and_refuses_none() {
    let pki = Pki::new("test CA");
    let mut setup = Setup::echo("mtls", pki.server(&[NAME]));
    setup.client_ca = Some(pki.roots());
    let server = TlsServer::start(setup).await;

    let client = pki.client("client-1");
    let with_certificate = TlsConfig::from_roots(pki.roots())
        .client_auth(client.chain, client.key)
        .expect("the client certificate");
    let (mut svc, _events) = http2(server.addr, with_certificate);
    assert_eq!(get_ok(&mut svc, "/paid").await, "mtls https://billing/paid");
    let seen = server.seen();
    assert_eq!(seen.client_certificates, [true], "{seen:?}");
    within(SOON, "close", svc.handle().close()).await;

    let (without, events) = http2(server.addr, TlsConfig::from_roots(pki.roots()));
    let error = next_failure(&without).await;
    assert_eq!(
        error.to_string(),
        format!(
            "connect failed: TLS handshake with \"billing\" at {} failed: the server requires a \
             client certificate (alert CertificateRequired): see TlsConfig::client_auth",
            server.addr
        )
    );
    assert_eq!(
        *rustls_source(tls_error(&error)),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
    );
    server
        .wait_for(SOON, "the refused client's second attempt", |seen| {
            seen.refused.len() >= 2
        })
        .await;
    let seen = server.seen();
    assert_eq!(
        seen.handshakes, 1,
        "only the client with a certificate: {seen:?}"
    );
    assert_eq!(seen.requests, ["GET https://billing/paid"], "{seen:?}");
    assert_eq!(events.count(connected), 0, "events: {:?}", events.seen());
    within(SOON, "close", without.handle().close()).await;
}

/// A client certificate whose key is not its own is refused when it is set, with a clear
/// error.
#[test]
fn client_auth_refuses_a_key_that_is_not_the_certificates() {
    let pki = Pki::new("test CA");
    let client = pki.client("client-1");
    let other = pki.client("client-2");
    let error = TlsConfig::from_roots(pki.roots())
        .client_auth(client.chain, other.key)
        .unwrap_err();
    assert_eq!(error.setting(), "client certificate");
    assert_eq!(
        error.to_string(),
        "invalid client certificate: the private key is not the certificate's"
    );
}

// === Discovery ===

/// A catalog that moves the client to a replica with a bad certificate (for another name)
/// leaves it waiting: every attempt looks the catalog up again, dials the bad replica with
/// the service's name as SNI and fails, a request waits, and the bad replica gets no request
/// byte. When the catalog lists a good replica again, the client connects and the waiting
/// request goes through.
#[tokio::test]
async fn a_catalog_move_to_a_bad_replica_waits_and_a_good_one_connects() {
    let pki = Pki::new("test CA");
    let good = TlsServer::start(Setup::echo("good-1", pki.server(&[NAME]))).await;
    let bad = TlsServer::start(Setup::echo("bad", pki.server(&["other.test"]))).await;
    let catalog = LocalCatalog::new();
    catalog.insert("replica", good.addr);
    let (hook, mut events) = recorder();
    let mut svc: H2 = PersistentConnectionLayer::new(catalog.clone())
        .server_name(NAME)
        .retry_delay(|| RETRY)
        .on_event(hook)
        .http2(Http2Connector::new().tls(TlsConfig::from_roots(pki.roots())));
    assert_eq!(get_ok(&mut svc, "/a").await, "good-1 https://billing/a");

    catalog.insert("replica", bad.addr);
    good.kill();
    events.wait_for(disconnected, SOON).await;
    let waiting = spawn_get(&svc, "/b");
    bad.wait_for(SOON, "three attempts", |seen| seen.accepted >= 3)
        .await;
    assert!(
        !waiting.is_finished(),
        "the request waits for a good replica"
    );
    let seen = bad.seen();
    assert!(
        sni_is(&seen, NAME),
        "SNI is the service's name, not the replica's address: {seen:?}"
    );
    assert_eq!((seen.handshakes, seen.bytes), (0, 0), "{seen:?}");
    assert!(seen.requests.is_empty(), "{seen:?}");
    assert!(svc.handle().current_connection().is_none());
    let failure = format!(
        "connect failed: TLS handshake with \"billing\" at {} failed: the certificate is not valid for \"billing\" (it is for \"other.test\")",
        bad.addr
    );
    assert!(
        events
            .seen()
            .iter()
            .any(|event| matches!(event, support::Ev::Failed(text, _) if *text == failure)),
        "events: {:?}",
        events.seen()
    );
    assert_eq!(events.count(connected), 1, "events: {:?}", events.seen());

    let back = TlsServer::start(Setup::echo("good-2", pki.server(&[NAME]))).await;
    catalog.insert("replica", back.addr);
    let body = within(SOON, "the waiting request", waiting)
        .await
        .unwrap()
        .expect("the waiting request failed");
    assert_eq!(body, "good-2 https://billing/b");
    events.wait_for(connected, SOON).await;
    assert_eq!(events.count(connected), 2, "events: {:?}", events.seen());
    assert!(bad.seen().requests.is_empty());
    within(SOON, "close", svc.handle().close()).await;
}

// === The handshake is part of the attempt ===

/// A server that accepts TCP and never answers the ClientHello: the layer's connect timeout
/// ends the attempt (kind `Timeout`), and the next attempt follows.
#[tokio::test]
async fn the_connect_timeout_bounds_the_handshake() {
    let pki = Pki::new("test CA");
    let (addr, mut accepted, server) = hostile(b"", None).await;
    each_attempt_ends_at_the_connect_timeout(&pki, addr, &mut accepted).await;
    server.abort();
}

/// Through the layer over TLS with a 300 ms connect timeout, to a server at `addr` that
/// never completes a handshake (`accepted` hears of each connection): the first failure is a
/// `Timeout`, and the next attempt follows.
async fn each_attempt_ends_at_the_connect_timeout(
    pki: &Pki,
    addr: SocketAddr,
    accepted: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let svc: H2 = PersistentConnectionLayer::fixed_address(addr)
        .server_name(NAME)
        .retry_delay(|| RETRY)
        .connect_timeout(Duration::from_millis(300))
        .http2(Http2Connector::new().tls(TlsConfig::from_roots(pki.roots())));
    let error = next_failure(&svc).await;
    assert_eq!(error.kind(), ConnectErrorKind::Timeout, "{error}");
    for _ in 0..2 {
        within(SOON, "an attempt", accepted.recv()).await.unwrap();
    }
    within(SOON, "close", svc.handle().close()).await;
}

// === Roots ===

/// Mozilla's roots (webpki-roots) do not trust a private CA.
#[cfg(feature = "tls-webpki-roots")]
#[tokio::test]
async fn webpki_roots_do_not_trust_a_private_ca() {
    let pki = Pki::new("private CA");
    let server = TlsServer::start(Setup::echo("private", pki.server(&[NAME]))).await;
    let (svc, _events) = http2(server.addr, TlsConfig::webpki_roots());
    let error = next_failure(&svc).await;
    assert_eq!(
        *rustls_source(tls_error(&error)),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        "{error}"
    );
    within(SOON, "close", svc.handle().close()).await;
}

/// The platform's verifier (the system's roots) does not trust a private CA.
#[cfg(feature = "tls-platform-verifier")]
#[tokio::test]
async fn the_platform_verifier_does_not_trust_a_private_ca() {
    let pki = Pki::new("private CA");
    let server = TlsServer::start(Setup::echo("private", pki.server(&[NAME]))).await;
    let config = TlsConfig::platform()
        .expect("the system's root certificates (Debian package ca-certificates)");
    let (svc, _events) = http2(server.addr, config);
    let error = next_failure(&svc).await;
    assert_eq!(
        *rustls_source(tls_error(&error)),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        "{error}"
    );
    within(SOON, "close", svc.handle().close()).await;
}

// === Hostile peers on the TLS port ===

/// A loopback server that answers every connection with `reply` (written `pace` apart, a byte
/// at a time when `pace` is set), then holds it open; counts connections.
async fn hostile(
    reply: &'static [u8],
    pace: Option<Duration>,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, accepted) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            tokio::spawn(async move {
                match pace {
                    None => {
                        let _ = tcp.write_all(reply).await;
                    }
                    Some(pace) => {
                        for byte in reply {
                            if tcp.write_all(&[*byte]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(pace).await;
                        }
                    }
                }
                // Held open: the client must end it.
                let mut sink = [0u8; 1024];
                while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink)
                    .await
                    .is_ok_and(|n| n > 0)
                {}
            });
        }
    });
    (addr, accepted, server)
}

/// A plaintext HTTP server on the TLS port answers the ClientHello with an HTTP/1 error:
/// a failed attempt whose error keeps rustls's complaint, no connection, and attempts at the
/// policy's pace (not in a loop).
#[tokio::test]
async fn garbage_instead_of_a_tls_handshake_is_a_failed_attempt_at_the_policys_pace() {
    let pki = Pki::new("test CA");
    let (addr, mut accepted, server) = hostile(
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
        None,
    )
    .await;
    let (svc, events) = http2(addr, TlsConfig::from_roots(pki.roots()));
    let error = next_failure(&svc).await;
    println!("{error}");
    assert_eq!(error.kind(), ConnectErrorKind::Connect, "{error}");
    assert!(
        tls_error(&error).rustls_error().is_some(),
        "the rustls error is kept: {error}"
    );
    // Attempts over a period, at most one per retry delay (plus the first).
    let period = RETRY * 10;
    let start = tokio::time::Instant::now();
    let mut attempts = 0;
    while start.elapsed() < period {
        if within(SOON, "an attempt", accepted.recv()).await.is_some() {
            attempts += 1;
        }
    }
    println!(
        "{attempts} attempts in {:?} at a {RETRY:?} retry delay",
        start.elapsed()
    );
    assert!(
        attempts <= 10 + 2,
        "{attempts} attempts: faster than the policy"
    );
    assert_eq!(events.count(connected), 0);
    within(SOON, "close", svc.handle().close()).await;
    server.abort();
}

/// A server that trickles its answer a byte every 100 ms never completes a handshake: the
/// connect timeout ends each attempt.
#[tokio::test]
async fn a_handshake_trickled_a_byte_at_a_time_ends_at_the_connect_timeout() {
    let pki = Pki::new("test CA");
    // The start of a TLS record (handshake, TLS 1.2) that never completes.
    let (addr, mut accepted, server) = hostile(
        &[0x16, 0x03, 0x03, 0x40, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        Some(Duration::from_millis(100)),
    )
    .await;
    each_attempt_ends_at_the_connect_timeout(&pki, addr, &mut accepted).await;
    server.abort();
}
