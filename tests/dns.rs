//! DNS as an address source (`discovery::dns`, feature `dns`), against a real dnsmasq on
//! 127.0.0.1 (see `support/dnsmasq.rs`; skipped with one line when dnsmasq is not installed,
//! unless `REQUIRE_REAL_SERVERS=1`) and real HTTP/2 replicas on 127.0.0.1 and ::1.
//!
//! A/AAAA records: connecting and serving, moving with the records once the old answer has
//! expired, leaving a dead replica on the next attempt. SRV records: priority order, weights,
//! targets resolved, moving after a restart, the turn through an answer. TTL 0 and the floor.
//! Every failure: `NXDOMAIN`, no records, a silent name server, an invalid name. The watches
//! (`Host::watch`, `Srv::watch`): lazy, they start with the answer, follow changed records
//! once the TTL has run out, keep the addresses while the name server is down, and empty on
//! `NXDOMAIN`.
#![cfg(feature = "dns")]

#[path = "support/dnsmasq.rs"]
mod dnsmasq;
#[path = "support/h2server.rs"]
mod h2server;
mod support;

use std::{
    error::Error as _,
    net::{Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use dnsmasq::{Config, Dnsmasq};
use futures_util::StreamExt as _;
use h2server::{ClosingListener, H2Server};
use persistent_connection::{
    ConnectError, ConnectErrorKind, Event, PersistentConnection, PersistentConnectionLayer,
    discovery::{
        AddressSource, Changes,
        dns::{DnsError, DnsErrorKind, Resolver},
    },
    http::{Http2Connection, Http2Connector},
    retry::{RetryContext, policy_fn},
};
use support::{
    Body, Ev, SOON, connected, disconnected, failed, get_ok, ms, recorder, secs, within,
};
use tokio::{net::UdpSocket, time::Instant};
use tower::discover::Change;

type Conn = Http2Connection<Body>;
type Svc = PersistentConnection<Conn>;

/// The name of the A/AAAA tests.
const NAME: &str = "api.example.test";
/// The name of the SRV tests.
const SERVICE: &str = "_http._tcp.example.test";
/// The retry delay of every client here (without jitter).
const RETRY: Duration = Duration::from_millis(100);
/// The connect timeout of the clients that do not test it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// === helpers ===

/// An HTTP/2 client through the layer over `source`: server name `api`, retry delay
/// [`RETRY`] without jitter, events to `hook`.
fn client(
    source: impl AddressSource<SocketAddr>,
    hook: impl Fn(&Event<SocketAddr, Conn>) + Send + Sync + 'static,
    connect_timeout: Duration,
) -> Svc {
    PersistentConnectionLayer::new(source)
        .server_name("api")
        .retry_delay(|| RETRY)
        .jitter(0.0)
        .connect_timeout(connect_timeout)
        .on_event(hook)
        .http2(Http2Connector::new())
}

/// Two replicas on one port number: `v4` on 127.0.0.1, `v6` on ::1.
async fn replica_pair(v4: &str, v6: &str) -> (H2Server, H2Server) {
    for _ in 0..20 {
        let first = H2Server::start(v4).await;
        let port = first.addr().port();
        // Free on ::1 too? (Released at once; the server binds it right after.)
        if std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            let second =
                H2Server::start_on(v6, SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await;
            return (first, second);
        }
        first.kill().await;
    }
    panic!("no port free on both 127.0.0.1 and ::1 in 20 tries");
}

/// The events so far, failures reduced to their kind.
fn tags(events: &support::Events) -> Vec<String> {
    events
        .seen()
        .into_iter()
        .map(|event| match event {
            Ev::Failed(_, kind) => format!("Failed({kind:?})"),
            other => other.to_string(),
        })
        .collect()
}

/// The [`DnsError`] a failed attempt carries.
fn dns_error(error: &ConnectError) -> &DnsError {
    error
        .source()
        .and_then(|source| source.downcast_ref::<DnsError>())
        .unwrap_or_else(|| panic!("not a DNS error: {error:?}"))
}

/// The outcome of the client's next attempt, which must fail: waits [`SOON`] at most.
async fn next_failure(svc: &Svc) -> ConnectError {
    let outcome = within(
        SOON,
        "the next attempt",
        svc.handle().connected_or_failed_to_connect(),
    )
    .await;
    match outcome {
        Ok(_) => panic!("the attempt connected"),
        Err(error) => error,
    }
}

/// Waits (at most `bound`) until the client has made `n` failed attempts.
async fn failed_attempts(svc: &Svc, n: u64, bound: Duration) {
    let deadline = Instant::now() + bound;
    while svc.handle().stats().failed_attempts < n {
        assert!(
            Instant::now() < deadline,
            "{} failed attempts within {bound:?}, not {n}",
            svc.handle().stats().failed_attempts
        );
        tokio::time::sleep(ms(10)).await;
    }
}

// === A/AAAA ===

/// The client looks up the host's A record, connects to that address at the given port and
/// serves requests there; the answer is shared with the source's clones, so the attempt
/// after `addresses()` asks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_connects_to_the_hosts_address_and_serves_requests() {
    let replica = H2Server::start("replica-1").await;
    let Some(dns) = Dnsmasq::start(Config::new().host(NAME, "127.0.0.1").ttl(60)).await else {
        return;
    };
    let host = Resolver::with_name_server(dns.addr()).host(NAME, replica.addr().port());
    assert_eq!(host.addresses().await.unwrap(), [replica.addr()]);

    let (hook, events) = recorder();
    let mut svc = client(host, hook, CONNECT_TIMEOUT);
    assert_eq!(
        get_ok(&mut svc, "/hello").await,
        "replica-1 http://api/hello"
    );
    assert_eq!(
        get_ok(&mut svc, "/again").await,
        "replica-1 http://api/again"
    );
    let address = format!("Address({})", replica.addr());
    assert_eq!(tags(&events), ["Attempting", &address, "Connected(0)"]);
    assert_eq!(replica.counts().accepted, 1);
    assert_eq!(dns.queries("A", NAME).await, 1, "one lookup in all");
}

/// Changed records move the client once the connection in use is gone and the old answer has
/// expired: the connection stays while the old replica lives; after it dies, attempts use the
/// kept answer until its TTL (2 s) has run out, never past it, and the one query then made
/// finds the new record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_records_move_the_client_once_the_old_answer_has_expired() {
    const TTL: u32 = 2;
    let (old, new) = replica_pair("old", "new").await;
    let config = Config::new().host(NAME, "127.0.0.1").ttl(TTL);
    let Some(mut dns) = Dnsmasq::start(config).await else {
        return;
    };
    let host = Resolver::with_name_server(dns.addr()).host(NAME, old.addr().port());
    let (hook, mut events) = recorder();
    let mut svc = client(host, hook, CONNECT_TIMEOUT);
    assert_eq!(get_ok(&mut svc, "/a").await, "old http://api/a");
    let looked_up = events.wait_for(connected, SOON).await;

    // The records change: the connection stays where it is.
    dns.reload(&Config::new().host(NAME, "::1")).await;
    assert_eq!(get_ok(&mut svc, "/b").await, "old http://api/b");

    // The old replica goes away: the client moves to the new record.
    old.kill().await;
    let gone = events.wait_for(disconnected, SOON).await;
    let moved = events
        .wait_for(
            |event| *event == Ev::Address(new.addr().to_string()),
            secs(u64::from(TTL)) + SOON,
        )
        .await;
    events.wait_for(connected, SOON).await;
    assert_eq!(get_ok(&mut svc, "/c").await, "new http://api/c");

    let failures = events.count(failed);
    println!(
        "moved {:?} after the old replica died ({:?} after the first connection), after {} \
         failed attempts",
        moved - gone,
        moved - looked_up,
        svc.handle().stats().failed_attempts,
    );
    // One lookup at the start and one once its answer expired: no query while it was kept.
    assert_eq!(dns.queries("A", NAME).await, 2);
    assert_eq!(dns.queries("AAAA", NAME).await, 2);
    let kinds = events.count(|event| matches!(event, Ev::Failed(_, ConnectErrorKind::Connect)));
    assert_eq!(
        kinds, failures,
        "every failed attempt was a connect to the old address"
    );
}

/// With two answers, killing the replica in use sends the next attempt to the other one: no
/// failed attempt, no new query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_answers_a_killed_replica_is_left_on_the_next_attempt() {
    let (v4, v6) = replica_pair("v4", "v6").await;
    let config = Config::new()
        .host(NAME, "127.0.0.1")
        .host(NAME, "::1")
        .ttl(60);
    let Some(dns) = Dnsmasq::start(config).await else {
        return;
    };
    let host = Resolver::with_name_server(dns.addr()).host(NAME, v4.addr().port());
    assert_eq!(host.addresses().await.unwrap(), [v4.addr(), v6.addr()]);

    let (hook, mut events) = recorder();
    let mut svc = client(host, hook, CONNECT_TIMEOUT);
    assert_eq!(get_ok(&mut svc, "/a").await, "v4 http://api/a");
    v4.kill().await;
    events.wait_for(disconnected, SOON).await;
    events.wait_for(connected, SOON).await;
    assert_eq!(get_ok(&mut svc, "/b").await, "v6 http://api/b");

    let (a, b) = (
        format!("Address({})", v4.addr()),
        format!("Address({})", v6.addr()),
    );
    assert_eq!(
        tags(&events),
        [
            "Attempting",
            &a,
            "Connected(0)",
            "Disconnected",
            "Attempting",
            &b,
            "Connected(1)"
        ]
    );
    assert_eq!(dns.queries("A", NAME).await, 1);
}

/// With two answers, the first of which is dead, the client connects to the second after
/// exactly one failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_answers_a_dead_replica_costs_one_failed_attempt() {
    let (v4, v6) = replica_pair("v4", "v6").await;
    v4.kill().await;
    let config = Config::new()
        .host(NAME, "127.0.0.1")
        .host(NAME, "::1")
        .ttl(60);
    let Some(dns) = Dnsmasq::start(config).await else {
        return;
    };
    let host = Resolver::with_name_server(dns.addr()).host(NAME, v4.addr().port());
    let (hook, mut events) = recorder();
    let mut svc = client(host, hook, CONNECT_TIMEOUT);
    events.wait_for(connected, SOON).await;
    assert_eq!(get_ok(&mut svc, "/a").await, "v6 http://api/a");

    let (a, b) = (
        format!("Address({})", v4.addr()),
        format!("Address({})", v6.addr()),
    );
    assert_eq!(
        tags(&events),
        ["Attempting", &a, "Failed(Connect)", &b, "Connected(0)"]
    );
}

// === SRV ===

/// SRV records are taken in priority order, lower first, every time (20 lookups), with each
/// target resolved: from the additional section when dnsmasq sends it (a target in its hosts
/// file: never asked for), else by a lookup of its own (a CNAME target, for which dnsmasq
/// 2.90 sends none). Through the layer, killing the replica in use moves the client to the
/// next priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_are_taken_in_priority_order_with_their_targets_resolved() {
    let replicas = [
        H2Server::start("r1").await,
        H2Server::start("r2").await,
        H2Server::start("r3").await,
    ];
    let [p1, p2, p3] = replicas.each_ref().map(|r| r.addr().port());
    let config = Config::new()
        .host("first.example.test", "127.0.0.1")
        .cname("alias.example.test", "first.example.test")
        .srv(SERVICE, "first.example.test", p3, 30, 5)
        .srv(SERVICE, "alias.example.test", p2, 20, 50)
        .srv(SERVICE, "first.example.test", p1, 10, 1)
        .ttl(60);
    let Some(dns) = Dnsmasq::start(config).await else {
        return;
    };
    let resolver = Resolver::with_name_server(dns.addr());
    let in_order = replicas.each_ref().map(H2Server::addr).to_vec();
    for _ in 0..20 {
        assert_eq!(resolver.srv(SERVICE).addresses().await.unwrap(), in_order);
    }
    assert!(
        dns.queries("A", "alias.example.test").await >= 1,
        "no glue: looked up"
    );
    assert_eq!(dns.queries("A", "first.example.test").await, 0, "glue used");

    let (hook, mut events) = recorder();
    let mut svc = client(resolver.srv(SERVICE), hook, CONNECT_TIMEOUT);
    assert_eq!(get_ok(&mut svc, "/").await, "r1 http://api/");
    replicas[0].kill().await;
    events.wait_for(disconnected, SOON).await;
    events.wait_for(connected, SOON).await;
    assert_eq!(get_ok(&mut svc, "/").await, "r2 http://api/");
    replicas[1].kill().await;
    events.wait_for(disconnected, SOON).await;
    events.wait_for(connected, SOON).await;
    assert_eq!(get_ok(&mut svc, "/").await, "r3 http://api/");
    assert_eq!(events.count(failed), 0);
}

/// Within one priority, weights order the records: over 100 fresh lookups, the record of
/// weight 3 comes first about three times in four and the one of weight 1 sometimes (each
/// bound fails by chance with a probability below 10^-8), and the record of weight 0 always
/// comes last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_order_the_records_of_one_priority() {
    let config = Config::new()
        .host("heavy.example.test", "127.0.0.1")
        .host("light.example.test", "127.0.0.1")
        .host("zero.example.test", "127.0.0.1")
        .srv(SERVICE, "heavy.example.test", 1003, 1, 3)
        .srv(SERVICE, "light.example.test", 1001, 1, 1)
        .srv(SERVICE, "zero.example.test", 1000, 1, 0);
    let Some(dns) = Dnsmasq::start(config).await else {
        return;
    };
    let resolver = Resolver::with_name_server(dns.addr());
    let (mut heavy_first, mut light_first) = (0, 0);
    for _ in 0..100 {
        let ports: Vec<u16> = resolver
            .srv(SERVICE)
            .addresses()
            .await
            .unwrap()
            .iter()
            .map(SocketAddr::port)
            .collect();
        assert_eq!(ports.len(), 3);
        assert_eq!(ports[2], 1000, "weight 0 last: {ports:?}");
        match ports[0] {
            1003 => heavy_first += 1,
            _ => light_first += 1,
        }
    }
    println!("weight 3 first {heavy_first} times, weight 1 first {light_first} times");
    assert!(
        heavy_first > 50,
        "weight 3 first only {heavy_first} times in 100"
    );
    assert!(light_first > 0, "weight 1 never first");
}

/// A changed SRV answer (dnsmasq restarted with another record) moves the client once the
/// old replica is gone and the old answer (TTL 1 s) has expired; one SRV query before, one
/// after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_srv_answer_moves_the_client() {
    let (one, two) = (H2Server::start("one").await, H2Server::start("two").await);
    let at = |target: &str, port: u16| {
        Config::new()
            .host(target, "127.0.0.1")
            .srv(SERVICE, target, port, 1, 1)
            .ttl(1)
    };
    let Some(mut dns) = Dnsmasq::start(at("one.example.test", one.addr().port())).await else {
        return;
    };
    let (hook, mut events) = recorder();
    let srv = Resolver::with_name_server(dns.addr()).srv(SERVICE);
    let mut svc = client(srv, hook, CONNECT_TIMEOUT);
    assert_eq!(get_ok(&mut svc, "/").await, "one http://api/");

    dns.restart_with(at("two.example.test", two.addr().port()))
        .await;
    one.kill().await;
    events.wait_for(disconnected, SOON).await;
    let moved = |event: &Ev| *event == Ev::Address(two.addr().to_string());
    events.wait_for(moved, secs(1) + SOON).await;
    events.wait_for(connected, SOON).await;
    assert_eq!(get_ok(&mut svc, "/").await, "two http://api/");
    assert_eq!(dns.queries("SRV", SERVICE).await, 2);
}

/// The turn through an SRV answer: a new query that brings the same records keeps it (the
/// next attempt takes the next record), one that brings other records starts again at the
/// top of the priority order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_srv_answer_keeps_the_turn_and_a_changed_one_starts_at_the_top() {
    let records = |count: u16| {
        let mut config = Config::new().host("t.example.test", "127.0.0.1");
        for priority in 1..=count {
            config = config.srv(SERVICE, "t.example.test", 1000 + priority, priority, 1);
        }
        config
    };
    let Some(mut dns) = Dnsmasq::start(records(2)).await else {
        return;
    };
    // TTL 0: each answer is kept for the floor.
    let srv = Resolver::with_name_server(dns.addr())
        .ttl_floor(ms(200))
        .srv(SERVICE);
    let port = |address: SocketAddr| address.port();
    assert_eq!(port(srv.get_address().await.unwrap()), 1001);

    // The same records again, once the first answer has expired.
    let deadline = Instant::now() + SOON;
    while dns.queries("SRV", SERVICE).await < 2 {
        assert!(
            Instant::now() < deadline,
            "no second SRV query within {SOON:?}"
        );
        srv.addresses().await.unwrap();
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(
        port(srv.get_address().await.unwrap()),
        1002,
        "the turn went on"
    );
    assert_eq!(port(srv.get_address().await.unwrap()), 1001);

    // Other records: the next attempt takes the top of the new order, not the next in turn.
    dns.restart_with(records(3)).await;
    let deadline = Instant::now() + SOON;
    while srv.addresses().await.unwrap().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the new answer not seen within {SOON:?}"
        );
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(
        port(srv.get_address().await.unwrap()),
        1001,
        "the turn started over"
    );
    assert_eq!(port(srv.get_address().await.unwrap()), 1002);
}

// === TTL floor ===

/// Records with a TTL of 0 do not cost a query per attempt: against a listener that closes
/// every connection (each attempt fails), a floor of 60 s makes one query for all attempts,
/// the default floor (1 s) at most one per second begun, while a floor of zero asks again
/// at every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_0_records_are_kept_for_the_floor_instead_of_asked_for_at_each_attempt() {
    const ATTEMPTS: u64 = 10;
    let closing = ClosingListener::start().await;
    let (long, default, zero) = (
        "long.example.test",
        "default.example.test",
        "zero.example.test",
    );
    let config = Config::new()
        .host(long, "127.0.0.1")
        .host(default, "127.0.0.1")
        .host(zero, "127.0.0.1")
        .ttl(0);
    let Some(dns) = Dnsmasq::start(config).await else {
        return;
    };
    let resolver = Resolver::with_name_server(dns.addr());
    let port = closing.addr.port();
    let start = Instant::now();
    let clients = [
        client(
            resolver.clone().ttl_floor(secs(60)).host(long, port),
            |_: &_| {},
            CONNECT_TIMEOUT,
        ),
        client(resolver.host(default, port), |_: &_| {}, CONNECT_TIMEOUT),
        client(
            resolver.clone().ttl_floor(Duration::ZERO).host(zero, port),
            |_: &_| {},
            CONNECT_TIMEOUT,
        ),
    ];
    for svc in &clients {
        failed_attempts(svc, ATTEMPTS, secs(10)).await;
    }
    let attempts = clients
        .each_ref()
        .map(|svc| svc.handle().stats().failed_attempts);
    for svc in &clients {
        svc.handle().close().await;
    }
    // Every query was made in this time.
    let elapsed = start.elapsed();
    let queries = [
        dns.queries("A", long).await,
        dns.queries("A", default).await,
        dns.queries("A", zero).await,
    ];
    println!(
        "in {elapsed:?}: failed attempts {attempts:?}, A queries {queries:?} (floors 60 s, 1 s, 0)"
    );
    assert_eq!(
        queries[0], 1,
        "floor 60 s: one query for {} attempts",
        attempts[0]
    );
    let seconds_begun = usize::try_from(elapsed.as_secs()).unwrap() + 1;
    assert!(
        queries[1] <= seconds_begun,
        "default floor: {} queries in {elapsed:?}",
        queries[1]
    );
    assert!(
        queries[2] >= usize::try_from(ATTEMPTS).unwrap(),
        "floor 0: a query per attempt, {} for at least {ATTEMPTS}",
        queries[2]
    );
}

// === failures ===

/// A name that does not exist (`NXDOMAIN`) is a failed attempt of kind `Discovery` whose
/// message names the query and the server; for A/AAAA and SRV alike. hickory's error is the
/// source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_exist_is_a_failed_attempt_naming_the_query() {
    let Some(dns) = Dnsmasq::start(Config::new()).await else {
        return;
    };
    let resolver = Resolver::with_name_server(dns.addr());
    let error = resolver
        .host("nope.example.test", 80)
        .addresses()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoSuchName);
    assert_eq!(
        error.to_string(),
        format!(
            "DNS lookup of A/AAAA records for \"nope.example.test\" failed: no such name \
             (NXDOMAIN) from {}",
            dns.addr()
        )
    );
    assert!(error.source().is_some(), "hickory's error is kept");
    let error = resolver
        .srv("_nope._tcp.example.test")
        .addresses()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoSuchName);
    assert!(
        error.to_string().starts_with(
            "DNS lookup of SRV records for \"_nope._tcp.example.test\" failed: no such name"
        ),
        "{error}"
    );

    let (hook, mut events) = recorder();
    let svc = client(
        resolver.host("nope.example.test", 80),
        hook,
        CONNECT_TIMEOUT,
    );
    let failure = next_failure(&svc).await;
    assert_eq!(failure.kind(), ConnectErrorKind::Discovery);
    assert_eq!(dns_error(&failure).kind(), DnsErrorKind::NoSuchName);
    events.wait_for(failed, SOON).await;
    let expected = format!(
        "address discovery failed: DNS lookup of A/AAAA records for \"nope.example.test\" \
         failed: no such name (NXDOMAIN) from {}",
        dns.addr()
    );
    assert_eq!(
        events.seen()[1],
        Ev::Failed(expected, ConnectErrorKind::Discovery)
    );
}

/// A name without records of the type asked for (an empty `NOERROR` answer) is a failed
/// attempt naming the query: A/AAAA of a name with a TXT record only, SRV of a name with an
/// A record only, SRV records whose only target is `.`, SRV records whose targets do not
/// exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_without_records_of_the_type_is_a_failed_attempt_naming_the_query() {
    let config = Config::new()
        .txt("txt.example.test", "hello")
        .host(NAME, "127.0.0.1")
        .srv("_none._tcp.example.test", ".", 0, 0, 0)
        .srv(SERVICE, "gone.example.test", 80, 1, 1);
    let Some(dns) = Dnsmasq::start(config).await else {
        return;
    };
    let resolver = Resolver::with_name_server(dns.addr());
    let server = dns.addr();

    let error = resolver
        .host("txt.example.test", 80)
        .addresses()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoRecords);
    assert_eq!(
        error.to_string(),
        format!(
            "DNS lookup of A/AAAA records for \"txt.example.test\" failed: the name has no \
             A/AAAA records (NOERROR, empty answer) from {server}"
        )
    );
    let error = resolver.srv(NAME).addresses().await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoRecords);
    assert_eq!(
        error.to_string(),
        format!(
            "DNS lookup of SRV records for \"{NAME}\" failed: the name has no SRV records \
             (NOERROR, empty answer) from {server}"
        )
    );
    let error = resolver
        .srv("_none._tcp.example.test")
        .addresses()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoRecords, "{error}");
    let error = resolver.srv(SERVICE).addresses().await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoSuchName);
    assert_eq!(
        error.to_string(),
        format!(
            "DNS lookup of SRV records for \"{SERVICE}\" failed: no SRV target has an address \
             (\"gone.example.test.\": no such name (NXDOMAIN)) from {server}"
        )
    );

    let (hook, _events) = recorder();
    let svc = client(resolver.host("txt.example.test", 80), hook, CONNECT_TIMEOUT);
    let failure = next_failure(&svc).await;
    assert_eq!(failure.kind(), ConnectErrorKind::Discovery);
    assert_eq!(dns_error(&failure).kind(), DnsErrorKind::NoRecords);
    assert!(
        failure.to_string().contains("\"txt.example.test\""),
        "{failure}"
    );
}

/// A name server that never answers makes a failed attempt of kind `Discovery` once the
/// query timeout (300 ms) has passed, naming the query and the server; the server did
/// receive the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_name_server_is_a_failed_attempt_after_the_query_timeout() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = silent.local_addr().unwrap();
    let resolver = Resolver::with_name_server(server).query_timeout(ms(300));
    let (hook, _events) = recorder();
    let start = Instant::now();
    let svc = client(resolver.host(NAME, 80), hook, CONNECT_TIMEOUT);
    let failure = next_failure(&svc).await;
    println!("failed after {:?}", start.elapsed());
    assert_eq!(failure.kind(), ConnectErrorKind::Discovery);
    assert_eq!(dns_error(&failure).kind(), DnsErrorKind::Timeout);
    assert_eq!(
        dns_error(&failure).to_string(),
        format!(
            "DNS lookup of A/AAAA records for \"{NAME}\" failed: no answer within 300ms from {server}"
        )
    );
    let mut datagram = [0u8; 512];
    assert!(
        silent.try_recv(&mut datagram).is_ok(),
        "the server was asked"
    );
}

/// With a connect timeout shorter than the query timeout, a silent name server makes the
/// attempt fail by the layer's timeout (kind `Timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_name_server_is_cut_off_by_a_shorter_connect_timeout() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let resolver = Resolver::with_name_server(silent.local_addr().unwrap());
    let (hook, _events) = recorder();
    let start = Instant::now();
    let svc = client(resolver.host(NAME, 80), hook, ms(300));
    let failure = next_failure(&svc).await;
    println!("failed after {:?}: {failure}", start.elapsed());
    assert_eq!(failure.kind(), ConnectErrorKind::Timeout);
}

/// An empty name is a failed attempt with a clear message, and nothing is asked: no panic,
/// and the next attempt fails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_name_is_a_clear_failed_attempt_and_no_query() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let resolver = Resolver::with_name_server(silent.local_addr().unwrap());
    let error = resolver.srv("").addresses().await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::InvalidName);
    assert_eq!(
        error.to_string(),
        "DNS lookup of SRV records for \"\" failed: invalid name: the name is empty"
    );
    let error = resolver
        .host("bad name.test", 80)
        .addresses()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::InvalidName, "{error}");

    let (hook, mut events) = recorder();
    let svc = client(resolver.host("", 80), hook, CONNECT_TIMEOUT);
    for _ in 0..2 {
        let failure = next_failure(&svc).await;
        assert_eq!(failure.kind(), ConnectErrorKind::Discovery);
        assert_eq!(
            failure.to_string(),
            "address discovery failed: DNS lookup of A/AAAA records for \"\" failed: invalid \
             name: the name is empty"
        );
    }
    events.wait_for(failed, SOON).await;
    let mut datagram = [0u8; 512];
    assert!(silent.try_recv(&mut datagram).is_err(), "nothing was asked");
}

// === watch ===

type Watch = Changes<SocketAddr, SocketAddr>;

/// The next `n` changes of `watch` as text (`+address`, `-address`), each within `bound` of
/// the one before.
async fn next_changes(watch: &mut Watch, n: usize, bound: Duration) -> Vec<String> {
    let mut changes = Vec::new();
    for _ in 0..n {
        let what = format!("change {} of {n} (after {changes:?})", changes.len() + 1);
        let change = within(bound, &what, watch.next())
            .await
            .expect("a watch never ends");
        changes.push(match change {
            Change::Insert(key, address) => {
                assert_eq!(key, address, "an address is its own key");
                format!("+{address}")
            }
            Change::Remove(key) => format!("-{key}"),
        });
    }
    changes
}

/// A watch retry policy of 200 ms that records the failures in a row it is asked with.
fn recording_policy() -> (
    impl persistent_connection::retry::RetryPolicy,
    Arc<Mutex<Vec<u32>>>,
) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let policy = policy_fn({
        let asked = asked.clone();
        move |context: &RetryContext<'_>| {
            asked.lock().unwrap().push(context.consecutive_failures());
            Some(ms(200))
        }
    });
    (policy, asked)
}

/// A host's watch asks nothing before it is polled; then it starts with the answer, and
/// follows the records (TTL 1 s) as they change: an address added (insert; the unchanged one
/// is not sent again), one removed (remove). With the name server stopped, the addresses stay
/// (nothing is sent for 2.5 s, while the watch asks again after each failure with 0, 1, 2, ...
/// failures in a row). Started again without the name (`NXDOMAIN`), the name lists no address:
/// every address is removed. With the name back, its address is inserted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_watch_follows_the_records_and_empties_only_on_nxdomain() {
    const TTL: u32 = 1;
    let with = |ips: &[&str]| {
        ips.iter()
            .fold(Config::new().ttl(TTL), |config, ip| config.host(NAME, ip))
    };
    let Some(mut dns) = Dnsmasq::start(with(&["127.0.0.1"])).await else {
        return;
    };
    let (policy, asked) = recording_policy();
    let resolver = Resolver::with_name_server(dns.addr())
        .query_timeout(ms(300))
        .watch_retry_policy(policy);
    let mut watch = resolver.host(NAME, 8080).watch();
    // Time for a task, had one been spawned, to ask: the time is the property.
    tokio::time::sleep(ms(500)).await;
    assert_eq!(
        dns.queries("A", NAME).await,
        0,
        "nothing asked before a poll"
    );

    assert_eq!(next_changes(&mut watch, 1, SOON).await, ["+127.0.0.1:8080"]);
    dns.reload(&with(&["127.0.0.1", "::1"])).await;
    let reloaded = Instant::now();
    assert_eq!(
        next_changes(&mut watch, 1, secs(u64::from(TTL)) + SOON).await,
        ["+[::1]:8080"]
    );
    println!(
        "address added: sent {:?} after the reload (TTL {TTL} s)",
        reloaded.elapsed()
    );
    dns.reload(&with(&["::1"])).await;
    assert_eq!(
        next_changes(&mut watch, 1, secs(u64::from(TTL)) + SOON).await,
        ["-127.0.0.1:8080"]
    );

    dns.stop().await;
    if let Ok(change) = tokio::time::timeout(ms(2500), watch.next()).await {
        panic!("the name server is down, yet the watch sent {change:?}");
    }
    let failures = asked.lock().unwrap().clone();
    println!("while the name server was down, the policy was asked with {failures:?}");
    assert!(failures.len() >= 2, "the watch asked again: {failures:?}");
    let counted: Vec<u32> = (0..).take(failures.len()).collect();
    assert_eq!(failures, counted, "failures in a row, counted from 0");

    dns.restart_with(Config::new().ttl(TTL)).await;
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["-[::1]:8080"],
        "NXDOMAIN: the name lists no address"
    );
    dns.restart_with(with(&["127.0.0.1"])).await;
    let back = Instant::now();
    assert_eq!(
        next_changes(&mut watch, 1, secs(1) + SOON).await,
        ["+127.0.0.1:8080"]
    );
    println!("name back: sent {:?} after the restart", back.elapsed());
}

/// An SRV watch starts with the records' addresses (targets resolved, the records' ports),
/// and sends what a changed answer (TTL 1 s) changes: a record gone (remove), one added
/// (insert), removals first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srv_watch_follows_the_records() {
    let records = |ports: &[u16]| {
        ports.iter().fold(
            Config::new().host("t.example.test", "127.0.0.1").ttl(1),
            |config, port| config.srv(SERVICE, "t.example.test", *port, 1, 1),
        )
    };
    let Some(mut dns) = Dnsmasq::start(records(&[1001, 1002])).await else {
        return;
    };
    let mut watch = Resolver::with_name_server(dns.addr()).srv(SERVICE).watch();
    assert_eq!(
        next_changes(&mut watch, 2, SOON).await,
        ["+127.0.0.1:1001", "+127.0.0.1:1002"]
    );
    dns.restart_with(records(&[1002, 1003])).await;
    assert_eq!(
        next_changes(&mut watch, 2, secs(1) + SOON).await,
        ["-127.0.0.1:1001", "+127.0.0.1:1003"]
    );
}
