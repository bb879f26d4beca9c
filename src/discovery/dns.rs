//! DNS as an address source: A/AAAA records ([`Resolver::host`]) and SRV records
//! ([`Resolver::srv`]), looked up with [hickory-resolver].
//!
//! Feature `dns`. hickory-resolver 0.26 needs Rust 1.88 (the rest of the crate needs 1.85).
//!
//! A [`Resolver`] says which name servers to ask: the system's ([`Resolver::system`], from
//! `/etc/resolv.conf`) or one given server ([`Resolver::with_name_server`]). From it,
//! [`Resolver::host`] and [`Resolver::srv`] make [`Host`] and [`Srv`], each an
//! [`AddressSource`] that [`PersistentConnectionLayer::new`] takes.
//!
//! # What an attempt gets
//!
//! - **The answer is kept until its TTL runs out**, and only then asked for again: an answer is
//!   never used past its TTL. A TTL below the [floor](Resolver::ttl_floor) (default 1 s)
//!   counts as the floor, so records with a TTL of 0 (Consul's default) do not turn every
//!   attempt into a query.
//! - **Each attempt takes the next address of the answer in turn**, so a client leaves a dead
//!   replica after one failed attempt (or at once, when it was connected to it: the next
//!   attempt is on the next address). A new query that brings the same addresses keeps the
//!   turn where it was; one that brings other addresses starts at the first of them.
//! - [`Host`]: the A records (in the order the server gave them), then the AAAA records.
//! - [`Srv`]: the SRV records in [RFC 2782] order: by priority, lower first; within a priority,
//!   a weighted random order (a record of weight 0 comes after those of positive weight). Each
//!   target is resolved to its addresses (from the answer's additional section when the server
//!   sends them, else with a lookup of its own), with the record's port. A target of `.`
//!   ("no service here") is skipped.
//! - **A failed lookup is a failed attempt** (an [`Event::FailedToConnect`] of kind
//!   [`ConnectErrorKind::Discovery`]), followed by the retry delay. Its [`DnsError`] names the
//!   query and the server, e.g. `DNS lookup of A/AAAA records for "api.example.test" failed:
//!   no such name (NXDOMAIN) from 127.0.0.1:5353`, and says with [`DnsError::kind`] whether
//!   the name does not exist, has no such records, or the server did not answer within the
//!   [query timeout](Resolver::query_timeout). The layer's
//!   [`connect_timeout`](crate::PersistentConnectionLayer::connect_timeout) bounds the lookup
//!   and the connect of an attempt together.
//!
//! [`Host::addresses`] and [`Srv::addresses`] give the whole current answer, in that order.
//!
//! # Watching: one connection per address
//!
//! [`Host::watch`] and [`Srv::watch`] follow the answer: a stream of
//! [`Change`](tower::discover::Change)s (a [`Changes`]`<SocketAddr, SocketAddr>`, each address
//! its own key) that starts with an insert per address of the first answer, then sends what
//! each new answer changes. It is what [`replicas::Replicas`](crate::replicas::Replicas)
//! takes to keep one persistent connection per address behind a balancer (see
//! [`Srv::watch`] for an example).
//!
//! - **It asks again when the answer expires**: after its TTL, at least the
//!   [floor](Resolver::ttl_floor), and never sooner than 100 ms after the query before (with a
//!   floor of zero and records of TTL 0). An answer that gives the same addresses sends
//!   nothing.
//! - **A name that does not exist (`NXDOMAIN`) or has no such records (an empty `NOERROR`
//!   answer) is an empty list**: every address known is removed, as the name server says there
//!   is none; the watch asks again after the floor (and inserts the addresses once the name
//!   has some again). For [`Srv`], the same goes when every target is such a name (and a
//!   record whose target is `.`, "no service here", is no record).
//! - **A failed lookup keeps the addresses known**: no answer within the [query
//!   timeout](Resolver::query_timeout), a server failure (`SERVFAIL`, `REFUSED`), a name
//!   server that cannot be reached. Nothing is sent, the failure is logged at `WARN`, and the
//!   watch asks again after the delay of its [retry policy](Resolver::watch_retry_policy)
//!   (default 1 s, growing to 30 s while the failures go on). For [`Srv`], a target whose own
//!   lookup fails is left out of an answer whose other targets resolve, as for attempts.
//! - An invalid name is an error in the log, and a watch that sends nothing; a name that is
//!   an IP address is one insert, and nothing more.
//!
//! The watch never ends and never fails.
//!
//! # Examples
//!
//! An HTTP/2 client of the replicas behind `api.example.test`'s A/AAAA records, on port 8080:
//!
//! ```no_run
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer, discovery::dns::Resolver, http::Http2Connector,
//! };
//! use tower::{Service, ServiceExt};
//! # use bytes::Bytes;
//! # use http_body_util::Empty;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let resolver = Resolver::system()?;
//! let mut svc = PersistentConnectionLayer::new(resolver.host("api.example.test", 8080))
//!     .server_name("api") // requests go to http://api/...
//!     .http2(Http2Connector::new());
//!
//! let request = http::Request::get("/hello").body(Empty::<Bytes>::new())?;
//! let response = svc.ready().await?.call(request).await?;
//! # let _ = response;
//! # Ok(()) }
//! ```
//!
//! The same over SRV records, which give the ports too:
//!
//! ```no_run
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer, discovery::dns::Resolver, http::Http2Connector,
//! };
//! # use bytes::Bytes;
//! # use http_body_util::Empty;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let resolver = Resolver::system()?;
//! let svc = PersistentConnectionLayer::new(resolver.srv("_http._tcp.api.example.test"))
//!     .server_name("api")
//!     .http2(Http2Connector::<Empty<Bytes>>::new());
//! # let _ = svc;
//! # Ok(()) }
//! ```
//!
//! # Kubernetes headless services
//!
//! A headless service (`clusterIP: None`) has an A record per ready pod under
//! `<service>.<namespace>.svc.cluster.local`, and an SRV record per ready pod and named port
//! under `_<port-name>._<proto>.<service>.<namespace>.svc.cluster.local` (e.g.
//! `_grpc._tcp.billing.payments.svc.cluster.local`). A pod that stops being ready leaves the
//! answer (CoreDNS answers with a TTL of 5 s by default). Use the pod's own configuration,
//! [`Resolver::system`]; end the name with a dot (`billing.payments.svc.cluster.local.`) to
//! skip the search list that the pod's `ndots:5` would otherwise try first.
//!
//! ```no_run
//! # use persistent_connection::{BoxError, PersistentConnectionLayer, discovery::dns::Resolver};
//! # fn main() -> Result<(), BoxError> {
//! let resolver = Resolver::system()?;
//! let pods = resolver.host("billing.payments.svc.cluster.local.", 8080);
//! let named_port = resolver.srv("_grpc._tcp.billing.payments.svc.cluster.local.");
//! # let _ = (PersistentConnectionLayer::new(pods), named_port);
//! # Ok(()) }
//! ```
//!
//! # Consul
//!
//! Consul's DNS interface, on port 8600 of the local agent, answers for the healthy instances
//! of a service: A records under `<service>.service.consul`, SRV records (with each
//! instance's port) under `_<service>._tcp.service.consul` or `<service>.service.consul`.
//! Its TTLs are 0 unless configured (`dns_config.service_ttl`): the
//! [floor](Resolver::ttl_floor) keeps that from becoming a query per attempt.
//!
//! ```no_run
//! # use persistent_connection::{BoxError, PersistentConnectionLayer, discovery::dns::Resolver};
//! # fn main() -> Result<(), BoxError> {
//! let consul = Resolver::with_name_server("127.0.0.1:8600".parse()?);
//! let billing = consul.srv("_billing._tcp.service.consul");
//! # let _ = PersistentConnectionLayer::new(billing);
//! # Ok(()) }
//! ```
//!
//! [hickory-resolver]: https://docs.rs/hickory-resolver
//! [RFC 2782]: https://www.rfc-editor.org/rfc/rfc2782
//! [`AddressSource`]: super::AddressSource
//! [`PersistentConnectionLayer::new`]: crate::PersistentConnectionLayer::new
//! [`Event::FailedToConnect`]: crate::Event::FailedToConnect
//! [`ConnectErrorKind::Discovery`]: crate::ConnectErrorKind::Discovery

use std::{
    collections::{BTreeMap, HashSet},
    error::Error,
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use futures_util::{
    future::{BoxFuture, join_all},
    stream,
};
use hickory_resolver::{
    TokioResolver,
    config::{
        ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
        ResolverOpts,
    },
    lookup::Lookup,
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::rr::{Name, RData, RecordType},
};
use rand::{RngExt, seq::SliceRandom};
use tracing::debug;

use super::{
    AddressSource, Changes,
    backoff::{self, WatchBackoff},
    changes_of,
};
use crate::retry::{Exponential, RetryPolicy, SharedPolicy};

/// The default [`Resolver::ttl_floor`].
const DEFAULT_TTL_FLOOR: Duration = Duration::from_secs(1);
/// The default [`Resolver::query_timeout`].
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

// === Resolver ===

/// Which name servers to ask, and how: the maker of [`Host`] and [`Srv`] address sources.
///
/// Cheap to clone: clones, and the sources made from them, share one hickory resolver (built
/// at the first lookup).
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<ResolverInner>,
}

struct ResolverInner {
    settings: Settings,
    /// Built at the first lookup, so that making a resolver needs no runtime and cannot fail.
    hickory: OnceLock<Result<TokioResolver, NetError>>,
}

#[derive(Clone)]
struct Settings {
    config: ResolverConfig,
    options: ResolverOpts,
    /// The name servers, as error messages name them.
    servers: Arc<str>,
    ttl_floor: Duration,
    query_timeout: Duration,
    /// The retry delay of a watch after a failed lookup.
    watch_retry: SharedPolicy,
}

impl Resolver {
    /// The system's configuration: on Unix, the name servers, search list and options of
    /// `/etc/resolv.conf` (and `/etc/hosts` is read first, like the system's own resolver).
    ///
    /// # Errors
    ///
    /// If the configuration cannot be read or names no name server.
    pub fn system() -> Result<Self, SystemConfigError> {
        let (config, options) =
            hickory_resolver::system_conf::read_system_conf().map_err(SystemConfigError)?;
        let servers = describe_servers(config.name_servers());
        Ok(Self::from_settings(Settings {
            config,
            options,
            servers,
            ttl_floor: DEFAULT_TTL_FLOOR,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            watch_retry: backoff::shared(default_watch_retry()),
        }))
    }

    /// Asks one name server, at `server`: over UDP, and over TCP when an answer does not fit
    /// in a UDP datagram. No search list, no hosts file: a name is looked up as it is.
    ///
    /// ```
    /// use persistent_connection::discovery::dns::Resolver;
    ///
    /// let consul = Resolver::with_name_server("127.0.0.1:8600".parse().unwrap());
    /// # let _ = consul;
    /// ```
    pub fn with_name_server(server: SocketAddr) -> Self {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let name_server = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let mut options = ResolverOpts::default();
        options.use_hosts_file = ResolveHosts::Never;
        Self::from_settings(Settings {
            config: ResolverConfig::from_name_servers(vec![name_server]),
            options,
            servers: Arc::from(server.to_string()),
            ttl_floor: DEFAULT_TTL_FLOOR,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            watch_retry: backoff::shared(default_watch_retry()),
        })
    }

    /// The least time an answer is kept: a record whose TTL is shorter (0, say) is kept for
    /// `floor` from the time it arrived, so it does not cost a query per attempt. A longer TTL
    /// is kept as it is; no answer is used past `max(TTL, floor)`. `Duration::ZERO` follows
    /// the TTLs exactly.
    ///
    /// Default is 1 second.
    pub fn ttl_floor(self, floor: Duration) -> Self {
        self.with(|settings| settings.ttl_floor = floor)
    }

    /// Bounds one lookup: its queries, their retries and, for SRV, the lookups of the
    /// targets. A lookup that runs past it fails with [`DnsErrorKind::Timeout`]. The layer's
    /// [`connect_timeout`](crate::PersistentConnectionLayer::connect_timeout) bounds the whole
    /// attempt anyway; this one makes a silent name server a failed lookup with a message
    /// naming it, rather than a timed-out attempt.
    ///
    /// Default is 5 seconds. A zero timeout fails every lookup.
    pub fn query_timeout(self, timeout: Duration) -> Self {
        self.with(|settings| settings.query_timeout = timeout)
    }

    /// The delay before a [watch](Host::watch) asks again after a failed lookup: no answer
    /// within the [query timeout](Self::query_timeout), a server failure (`SERVFAIL`,
    /// `REFUSED`), a name server that cannot be reached. (An answer that the name does not
    /// exist, or has no records, is no failure: it is an empty list, asked for again after
    /// the [floor](Self::ttl_floor).)
    ///
    /// The policy is asked after each failure, with the failures in a row in its
    /// [`RetryContext`](crate::retry::RetryContext) counted as the layer's driver counts
    /// them: after the first failure it is asked for 0 failures (so the first retry waits an
    /// [`Exponential`]'s initial delay), after the second for 1, and so on; the count starts
    /// over at the next answer. The delay is used as is, without jitter, clamped to
    /// [`MAX_RETRY_DELAY`](crate::retry::MAX_RETRY_DELAY). A policy that gives up (`None`)
    /// stops the lookups: the watch keeps its last known addresses and sends nothing more (it
    /// does not end), with an error in the log.
    ///
    /// Default: `Exponential::new(1 s, 1.6, 30 s)`: the shape of [`Exponential::grpc`], with
    /// a first retry after the default floor of 1 s and a cap of 30 s, so that a name server
    /// back after an outage is followed again within 30 s. It does not apply to lookups for
    /// connection attempts, which follow the layer's retry policy.
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_connection::{discovery::dns::Resolver, retry::Constant};
    ///
    /// let resolver = Resolver::with_name_server("127.0.0.1:8600".parse().unwrap())
    ///     .watch_retry_policy(Constant::new(Duration::from_secs(2)));
    /// # let _ = resolver;
    /// ```
    pub fn watch_retry_policy(self, policy: impl RetryPolicy) -> Self {
        let policy = backoff::shared(policy);
        self.with(|settings| settings.watch_retry = policy)
    }

    /// An address source for `name`'s A and AAAA records, each address with `port`.
    ///
    /// `name` may also be an IP address, which is then the only answer (no query). An invalid
    /// name (empty, say) is a failed lookup at each attempt, with a [`DnsError`] of kind
    /// [`DnsErrorKind::InvalidName`].
    pub fn host(&self, name: impl Into<String>, port: u16) -> Host {
        let name: Arc<str> = Arc::from(name.into());
        let target = match name.parse::<IpAddr>() {
            Ok(ip) => Target::Ip(ip),
            Err(_) => parse_name(&name),
        };
        Host {
            source: Source::new(self.clone(), name, target),
            port,
        }
    }

    /// An address source for `name`'s SRV records (e.g. `_http._tcp.api.example.test`), each
    /// target resolved to its addresses, with the record's port.
    ///
    /// An invalid name (empty, say) is a failed lookup at each attempt, with a [`DnsError`] of
    /// kind [`DnsErrorKind::InvalidName`].
    pub fn srv(&self, name: impl Into<String>) -> Srv {
        let name: Arc<str> = Arc::from(name.into());
        let target = parse_name(&name);
        Srv {
            source: Source::new(self.clone(), name, target),
        }
    }

    fn from_settings(settings: Settings) -> Self {
        Self {
            inner: Arc::new(ResolverInner {
                settings,
                hickory: OnceLock::new(),
            }),
        }
    }

    /// A resolver with changed settings (and a hickory resolver of its own, built later).
    fn with(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.inner.settings.clone();
        change(&mut settings);
        Self::from_settings(settings)
    }

    fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The hickory resolver, built at the first call.
    fn hickory(&self) -> Result<&TokioResolver, NetError> {
        let built = self.inner.hickory.get_or_init(|| {
            let settings = &self.inner.settings;
            let mut options = settings.options.clone();
            options.timeout = settings.query_timeout;
            options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            TokioResolver::builder_with_config(
                settings.config.clone(),
                TokioRuntimeProvider::default(),
            )
            .with_options(options)
            .build()
        });
        built.as_ref().map_err(Clone::clone)
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.settings();
        f.debug_struct("Resolver")
            .field("name_servers", &settings.servers)
            .field("ttl_floor", &settings.ttl_floor)
            .field("query_timeout", &settings.query_timeout)
            .finish()
    }
}

/// The name servers of a configuration, as messages name them.
fn describe_servers(servers: &[NameServerConfig]) -> Arc<str> {
    let addresses: Vec<String> = servers
        .iter()
        .map(|server| {
            let port = server.connections.first().map_or(53, |c| c.port);
            SocketAddr::new(server.ip, port).to_string()
        })
        .collect();
    match addresses.as_slice() {
        [one] => Arc::from(one.as_str()),
        _ => Arc::from(format!("[{}]", addresses.join(", "))),
    }
}

/// What a source looks up, parsed once.
#[derive(Clone, Debug)]
enum Target {
    Name(Name),
    Ip(IpAddr),
    Invalid(String),
}

fn parse_name(name: &str) -> Target {
    if name.trim().is_empty() {
        return Target::Invalid("the name is empty".to_owned());
    }
    if name == "." {
        return Target::Invalid("the root name `.` has no records to connect to".to_owned());
    }
    match Name::from_str(name) {
        Ok(parsed) => Target::Name(parsed),
        Err(error) => Target::Invalid(error.to_string()),
    }
}

// === Host ===

/// An [`AddressSource`] of one name's A and AAAA records: made by [`Resolver::host`].
///
/// Each attempt takes the next address of the current answer; the answer is asked for again
/// once its TTL (at least the resolver's [floor](Resolver::ttl_floor)) has run out. Clones
/// share the answer and the turn.
#[derive(Clone)]
pub struct Host {
    source: Source,
    port: u16,
}

impl Host {
    /// The whole current answer, A records first: the kept one while its TTL lasts, else a
    /// new one (which attempts then use too).
    ///
    /// # Errors
    ///
    /// If the lookup fails: see [`DnsError`].
    pub async fn addresses(&self) -> Result<Vec<SocketAddr>, DnsError> {
        self.source.addresses(|| self.lookup()).await
    }

    /// The name looked up.
    pub fn name(&self) -> &str {
        &self.source.name
    }

    /// The addresses of the name, as they change: what
    /// [`Replicas`](crate::replicas::Replicas) takes to keep one persistent connection per
    /// address. Each address is its own key. See
    /// [Watching](self#watching-one-connection-per-address) for when it asks and what a
    /// failure does.
    ///
    /// The stream does nothing until it is polled (no task is spawned; dropping it stops it),
    /// and it asks the name servers itself: it neither uses nor changes the answer that
    /// attempts take their addresses from.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use persistent_connection::discovery::dns::Resolver;
    /// use tower::discover::Change;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), persistent_connection::BoxError> {
    /// let host = Resolver::system()?.host("api.example.test", 8080);
    /// let mut changes = host.watch();
    /// while let Some(change) = changes.next().await {
    ///     match change {
    ///         Change::Insert(address, _) => println!("{address} listed"),
    ///         Change::Remove(address) => println!("{address} gone"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn watch(&self) -> Changes<SocketAddr, SocketAddr> {
        let host = self.clone();
        watch_answers(self.source.clone(), RecordKind::Host, move || {
            let host = host.clone();
            async move { host.lookup().await }
        })
    }

    async fn next_address(self) -> Result<SocketAddr, DnsError> {
        self.source.next_address(|| self.lookup()).await
    }

    async fn lookup(&self) -> Result<Answer, DnsError> {
        let source = &self.source;
        let name = match &*source.target {
            Target::Name(name) => name.clone(),
            Target::Ip(ip) => {
                return Ok(Answer::forever(vec![SocketAddr::new(*ip, self.port)]));
            }
            Target::Invalid(reason) => return Err(source.invalid(RecordKind::Host, reason)),
        };
        let received = Instant::now();
        let lookup = source
            .bounded(RecordKind::Host, async {
                let hickory = source.resolver.hickory()?;
                hickory.lookup_ip(name).await
            })
            .await?;
        let addresses = unique(lookup.iter().map(|ip| SocketAddr::new(ip, self.port)));
        if addresses.is_empty() {
            return Err(source.error(RecordKind::Host, DnsErrorKind::NoRecords, None));
        }
        let valid_until = source.keep_until(received, lookup.valid_until());
        debug!(
            name = %source.name,
            ?addresses,
            valid_for = ?valid_until.map(|until| until.saturating_duration_since(Instant::now())),
            "DNS: A/AAAA answer"
        );
        Ok(Answer::new(addresses, Vec::new(), valid_until))
    }
}

impl AddressSource<SocketAddr> for Host {
    type Error = DnsError;
    type Future = BoxFuture<'static, Result<SocketAddr, DnsError>>;

    fn get_address(&self) -> Self::Future {
        Box::pin(self.clone().next_address())
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.source.name)
            .field("port", &self.port)
            .field("resolver", &self.source.resolver)
            .finish()
    }
}

// === Srv ===

/// An [`AddressSource`] of one name's SRV records: made by [`Resolver::srv`].
///
/// Each attempt takes the next address in the current answer's [RFC 2782] order (by priority,
/// then a weighted random order); the answer is asked for again once its TTL (the least of
/// the SRV records' and their targets' addresses', at least the resolver's
/// [floor](Resolver::ttl_floor)) has run out. A new answer with other records starts again at
/// the start of its order. Clones share the answer and the turn.
///
/// A target that does not resolve is left out of the answer; when none resolves, the lookup
/// fails with the kind of the first target's failure, and the message lists each target's.
///
/// [RFC 2782]: https://www.rfc-editor.org/rfc/rfc2782
#[derive(Clone)]
pub struct Srv {
    source: Source,
}

/// One SRV record, as the order needs it.
#[derive(Clone, Debug)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
    target: Name,
}

impl Srv {
    /// The whole current answer, in the order attempts take it: the kept one while its TTL
    /// lasts, else a new one (which attempts then use too).
    ///
    /// # Errors
    ///
    /// If the lookup fails: see [`DnsError`].
    pub async fn addresses(&self) -> Result<Vec<SocketAddr>, DnsError> {
        self.source.addresses(|| self.lookup()).await
    }

    /// The name looked up.
    pub fn name(&self) -> &str {
        &self.source.name
    }

    /// The addresses of the SRV records' targets, with the records' ports, as they change:
    /// what [`Replicas`](crate::replicas::Replicas) takes to keep one persistent connection
    /// per address. Each address is its own key (the order of the records, which attempts
    /// follow, is no part of it). See
    /// [Watching](self#watching-one-connection-per-address) for when it asks and what a
    /// failure does.
    ///
    /// The stream does nothing until it is polled (no task is spawned; dropping it stops it),
    /// and it asks the name servers itself: it neither uses nor changes the answer that
    /// attempts take their addresses from.
    ///
    /// # Example
    ///
    /// One persistent HTTP/2 connection per address of a service, balanced:
    ///
    /// ```no_run
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use persistent_connection::{
    ///     BoxError, PersistentConnectionLayer, discovery::dns::Resolver, http::Http2Connector,
    ///     replicas::Replicas,
    /// };
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let srv = Resolver::system()?.srv("_http._tcp.api.example.test");
    /// let layer = PersistentConnectionLayer::new(srv.clone()).server_name("api");
    /// let client = Replicas::http2(srv.watch(), layer, Http2Connector::new()).balanced(64);
    ///
    /// let request = http::Request::get("/hello").body(Empty::<Bytes>::new())?;
    /// let response = client.oneshot(request).await?;
    /// # let _ = response;
    /// # Ok(()) }
    /// ```
    pub fn watch(&self) -> Changes<SocketAddr, SocketAddr> {
        let srv = self.clone();
        watch_answers(self.source.clone(), RecordKind::Srv, move || {
            let srv = srv.clone();
            async move { srv.lookup().await }
        })
    }

    async fn next_address(self) -> Result<SocketAddr, DnsError> {
        self.source.next_address(|| self.lookup()).await
    }

    async fn lookup(&self) -> Result<Answer, DnsError> {
        let source = &self.source;
        let name = match &*source.target {
            Target::Name(name) => name.clone(),
            Target::Ip(_) => {
                return Err(source.invalid(RecordKind::Srv, "an IP address has no SRV records"));
            }
            Target::Invalid(reason) => return Err(source.invalid(RecordKind::Srv, reason)),
        };
        let received = Instant::now();
        source
            .bounded(RecordKind::Srv, async {
                let hickory = source.resolver.hickory()?;
                let lookup = hickory.lookup(name, RecordType::SRV).await?;
                Ok(self.resolve_targets(hickory, &lookup, received).await)
            })
            .await?
    }

    /// The addresses of the SRV records of `lookup`, in order.
    async fn resolve_targets(
        &self,
        hickory: &TokioResolver,
        lookup: &Lookup,
        received: Instant,
    ) -> Result<Answer, DnsError> {
        let source = &self.source;
        let records: Vec<SrvRecord> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: srv.target.clone(),
                }),
                _ => None,
            })
            // RFC 2782: a target of "." means the service is decidedly not available here.
            .filter(|record| !record.target.is_root())
            .collect();
        if records.is_empty() {
            return Err(source.error(RecordKind::Srv, DnsErrorKind::NoRecords, None));
        }
        let ordered = rfc2782_order(records, &mut rand::rng());

        // Each target's addresses: from the additional section if the server sent them, else
        // from a lookup of its own (all of those at once).
        let mut valid_until = lookup.valid_until();
        let resolved = join_all(ordered.iter().map(|record| async {
            let glue: Vec<(IpAddr, u32)> = lookup
                .additionals()
                .iter()
                .filter(|additional| additional.name.eq_ignore_root(&record.target))
                .filter_map(|additional| Some((additional.data.ip_addr()?, additional.ttl)))
                .collect();
            if !glue.is_empty() {
                let ttl = glue.iter().map(|&(_, ttl)| ttl).min().unwrap_or(0);
                let until = received + Duration::from_secs(u64::from(ttl));
                return Ok((glue.into_iter().map(|(ip, _)| ip).collect(), until));
            }
            match hickory.lookup_ip(record.target.clone()).await {
                Ok(ips) => Ok((ips.iter().collect::<Vec<IpAddr>>(), ips.valid_until())),
                Err(error) => Err(error),
            }
        }))
        .await;

        let mut addresses = Vec::new();
        let mut key = Vec::new();
        let mut failures = Vec::new();
        for (record, result) in ordered.iter().zip(resolved) {
            match result {
                Ok((ips, until)) if !ips.is_empty() => {
                    valid_until = valid_until.min(until);
                    for ip in ips {
                        let address = SocketAddr::new(ip, record.port);
                        addresses.push(address);
                        key.push((record.priority, record.weight, address));
                    }
                }
                Ok(_) => failures.push((record.target.clone(), DnsErrorKind::NoRecords, None)),
                Err(error) => {
                    debug!(name = %source.name, target = %record.target, %error, "DNS: SRV target not resolved");
                    failures.push((record.target.clone(), classify(&error), Some(error)));
                }
            }
        }
        let addresses = unique(addresses);
        if addresses.is_empty() {
            return Err(source.targets_failed(failures));
        }
        let valid_until = source.keep_until(received, valid_until);
        debug!(
            name = %source.name,
            ?addresses,
            valid_for = ?valid_until.map(|until| until.saturating_duration_since(Instant::now())),
            "DNS: SRV answer"
        );
        key.sort_unstable();
        Ok(Answer::new(addresses, key, valid_until))
    }
}

impl AddressSource<SocketAddr> for Srv {
    type Error = DnsError;
    type Future = BoxFuture<'static, Result<SocketAddr, DnsError>>;

    fn get_address(&self) -> Self::Future {
        Box::pin(self.clone().next_address())
    }
}

impl fmt::Debug for Srv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Srv")
            .field("name", &self.source.name)
            .field("resolver", &self.source.resolver)
            .finish()
    }
}

/// RFC 2782's order: by priority, lower first; within a priority, a weighted random order,
/// where each pick takes a record with a probability proportional to its weight among those
/// left, and records of weight 0 come last, in random order (as Go's `net.LookupSRV` does).
fn rfc2782_order(mut records: Vec<SrvRecord>, rng: &mut impl RngExt) -> Vec<SrvRecord> {
    // Random first, so that equal records (and those of weight 0) come in random order.
    records.shuffle(rng);
    records.sort_by_key(|record| record.priority);
    let mut start = 0;
    while start < records.len() {
        let priority = records[start].priority;
        let end = start + records[start..].partition_point(|r| r.priority == priority);
        let mut rest = &mut records[start..end];
        let mut sum: u32 = rest.iter().map(|r| u32::from(r.weight)).sum();
        while sum > 0 && rest.len() > 1 {
            let pick = rng.random_range(0..sum);
            let mut running = 0;
            for i in 0..rest.len() {
                running += u32::from(rest[i].weight);
                if running > pick {
                    rest.swap(0, i);
                    break;
                }
            }
            sum -= u32::from(rest[0].weight);
            rest = &mut rest[1..];
        }
        start = end;
    }
    records
}

/// `addresses` without repeats, in order.
fn unique(addresses: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    addresses
        .into_iter()
        .filter(|address| seen.insert(*address))
        .collect()
}

// === Source: the kept answer and the turn ===

/// What [`Host`] and [`Srv`] share: the name, the resolver, and the kept answer.
#[derive(Clone)]
struct Source {
    resolver: Resolver,
    name: Arc<str>,
    target: Arc<Target>,
    kept: Arc<Mutex<Option<Answer>>>,
}

/// An answer, kept until `valid_until`, and the turn through it.
#[derive(Clone, Debug)]
struct Answer {
    addresses: Vec<SocketAddr>,
    /// What makes two answers the same (the records, in a set order): a new answer equal to
    /// the kept one keeps the kept one's order and turn.
    key: Vec<(u16, u16, SocketAddr)>,
    /// `None`: never expires (an IP address given as the name).
    valid_until: Option<Instant>,
    /// The index of the address the next attempt takes.
    next: usize,
}

impl Answer {
    /// An answer whose `key` is its sorted addresses when `key` is empty.
    fn new(
        addresses: Vec<SocketAddr>,
        mut key: Vec<(u16, u16, SocketAddr)>,
        valid_until: Option<Instant>,
    ) -> Self {
        if key.is_empty() {
            key = addresses.iter().map(|address| (0, 0, *address)).collect();
            key.sort_unstable();
        }
        Self {
            addresses,
            key,
            valid_until,
            next: 0,
        }
    }

    fn forever(addresses: Vec<SocketAddr>) -> Self {
        Self {
            addresses,
            key: Vec::new(),
            valid_until: None,
            next: 0,
        }
    }

    fn is_valid_at(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|until| now < until)
    }

    fn take_next(&mut self) -> SocketAddr {
        let address = self.addresses[self.next % self.addresses.len()];
        self.next = (self.next + 1) % self.addresses.len();
        address
    }
}

impl Source {
    fn new(resolver: Resolver, name: Arc<str>, target: Target) -> Self {
        Self {
            resolver,
            name,
            target: Arc::new(target),
            kept: Arc::default(),
        }
    }

    /// The kept answer, locked (never across an await).
    fn kept(&self) -> std::sync::MutexGuard<'_, Option<Answer>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `use_it` of the kept answer, if there is one still valid at `now`.
    fn with_valid<T>(&self, now: Instant, use_it: impl FnOnce(&mut Answer) -> T) -> Option<T> {
        let mut kept = self.kept();
        let answer = kept.as_mut().filter(|answer| answer.is_valid_at(now))?;
        Some(use_it(answer))
    }

    async fn next_address<F>(&self, lookup: impl FnOnce() -> F) -> Result<SocketAddr, DnsError>
    where
        F: Future<Output = Result<Answer, DnsError>>,
    {
        if let Some(address) = self.with_valid(Instant::now(), Answer::take_next) {
            return Ok(address);
        }
        let fresh = lookup().await?;
        Ok(keep(&mut self.kept(), fresh).take_next())
    }

    async fn addresses<F>(&self, lookup: impl FnOnce() -> F) -> Result<Vec<SocketAddr>, DnsError>
    where
        F: Future<Output = Result<Answer, DnsError>>,
    {
        if let Some(addresses) = self.with_valid(Instant::now(), |answer| answer.addresses.clone())
        {
            return Ok(addresses);
        }
        let fresh = lookup().await?;
        Ok(keep(&mut self.kept(), fresh).addresses.clone())
    }

    /// When an answer received at `received`, valid until `valid_until` by its TTLs, is
    /// asked for again: not before the floor (never, for a floor past the clock's range).
    fn keep_until(&self, received: Instant, valid_until: Instant) -> Option<Instant> {
        let floor = received.checked_add(self.resolver.settings().ttl_floor)?;
        Some(valid_until.max(floor))
    }

    /// Runs a lookup within the query timeout; maps hickory's errors.
    async fn bounded<T>(
        &self,
        records: RecordKind,
        lookup: impl Future<Output = Result<T, NetError>>,
    ) -> Result<T, DnsError> {
        let timeout = self.resolver.settings().query_timeout;
        match tokio::time::timeout(timeout, lookup).await {
            Err(_elapsed) => Err(self.error(records, DnsErrorKind::Timeout, None)),
            Ok(Err(error)) => Err(self.error(records, classify(&error), Some(error))),
            Ok(Ok(found)) => Ok(found),
        }
    }

    fn error(&self, records: RecordKind, kind: DnsErrorKind, source: Option<NetError>) -> DnsError {
        let settings = self.resolver.settings();
        let reason = match (kind, &source) {
            (DnsErrorKind::Timeout, _) => format!("no answer within {:?}", settings.query_timeout),
            (DnsErrorKind::NoSuchName, _) => "no such name (NXDOMAIN)".to_owned(),
            (DnsErrorKind::NoRecords, _) => {
                format!("the name has no {records} records (NOERROR, empty answer)")
            }
            (_, Some(error)) => error.to_string(),
            (_, None) => "failed".to_owned(),
        };
        DnsError {
            kind,
            records,
            name: self.name.clone(),
            reason: format!("{reason} from {}", settings.servers),
            source,
            no_address: says_no_address(kind),
        }
    }

    fn invalid(&self, records: RecordKind, reason: &str) -> DnsError {
        DnsError {
            kind: DnsErrorKind::InvalidName,
            records,
            name: self.name.clone(),
            reason: format!("invalid name: {reason}"),
            source: None,
            no_address: false,
        }
    }

    /// No SRV target resolved to an address.
    fn targets_failed(&self, failures: Vec<(Name, DnsErrorKind, Option<NetError>)>) -> DnsError {
        let settings = self.resolver.settings();
        let described: Vec<String> = failures
            .iter()
            .map(|(target, kind, _)| {
                let what = match kind {
                    DnsErrorKind::NoSuchName => "no such name (NXDOMAIN)",
                    DnsErrorKind::NoRecords => "no A/AAAA records",
                    DnsErrorKind::Timeout => "no answer",
                    _ => "lookup failed",
                };
                format!("\"{target}\": {what}")
            })
            .collect();
        let kind = failures
            .first()
            .map_or(DnsErrorKind::NoRecords, |(_, kind, _)| *kind);
        let no_address = failures.iter().all(|(_, kind, _)| says_no_address(*kind));
        let source = failures.into_iter().find_map(|(_, _, error)| error);
        DnsError {
            kind,
            records: RecordKind::Srv,
            name: self.name.clone(),
            reason: format!(
                "no SRV target has an address ({}) from {}",
                described.join("; "),
                settings.servers
            ),
            source,
            no_address,
        }
    }
}

/// Whether a failure of `kind` is the name server's word that there is no address.
fn says_no_address(kind: DnsErrorKind) -> bool {
    matches!(kind, DnsErrorKind::NoSuchName | DnsErrorKind::NoRecords)
}

/// Keeps `fresh` in `kept`, unless the kept answer has the same records: then only its expiry
/// moves, and its order and turn stay.
fn keep(kept: &mut Option<Answer>, fresh: Answer) -> &mut Answer {
    match kept {
        Some(answer) if answer.key == fresh.key && !fresh.key.is_empty() => {
            answer.valid_until = fresh.valid_until;
        }
        _ => *kept = Some(fresh),
    }
    kept.as_mut().expect("an answer was just kept")
}

// === watch ===

/// The least time between two queries of a watch, whatever the TTL and the floor.
const WATCH_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The default [`Resolver::watch_retry_policy`].
fn default_watch_retry() -> Exponential {
    Exponential::new(Duration::from_secs(1), 1.6, Duration::from_secs(30))
}

/// When a watch asks next.
#[derive(Clone, Copy, Debug)]
enum NextQuery {
    Now,
    At(Instant),
    /// The answer never expires (an IP address given as the name), or nothing can be asked
    /// (an invalid name, a retry policy that gave up).
    Never,
}

/// The state of one watch: its source, its lookup, and when to ask next.
struct Watching<F> {
    source: Source,
    records: RecordKind,
    lookup: F,
    backoff: WatchBackoff,
    next: NextQuery,
    /// How many addresses the last set sent had.
    listed: usize,
}

/// The changes between the answers of `lookup`, asked for as each expires.
fn watch_answers<F, Fut>(
    source: Source,
    records: RecordKind,
    lookup: F,
) -> Changes<SocketAddr, SocketAddr>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Answer, DnsError>> + Send + 'static,
{
    let backoff = WatchBackoff::new(source.resolver.settings().watch_retry.clone());
    let watching = Watching {
        source,
        records,
        lookup,
        backoff,
        next: NextQuery::Now,
        listed: 0,
    };
    changes_of(stream::unfold(watching, |mut watching| async move {
        let set = watching.next_set().await;
        Some((set, watching))
    }))
}

impl<F, Fut> Watching<F>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Answer, DnsError>>,
{
    /// The next set of addresses: waits until it is time to ask, asks (again, after a
    /// failure, after the retry delay) until there is an answer.
    async fn next_set(&mut self) -> BTreeMap<SocketAddr, SocketAddr> {
        loop {
            match self.next {
                NextQuery::Now => {}
                NextQuery::At(at) => tokio::time::sleep_until(at.into()).await,
                NextQuery::Never => std::future::pending().await,
            }
            let asked = Instant::now();
            let soonest = asked + WATCH_MIN_INTERVAL;
            match (self.lookup)().await {
                Ok(answer) => {
                    self.backoff.succeeded();
                    self.next = match answer.valid_until {
                        Some(until) => NextQuery::At(until.max(soonest)),
                        None => NextQuery::Never,
                    };
                    return self.listing(&answer.addresses);
                }
                Err(error) => {
                    if let Some(set) = self.failed(&error, asked) {
                        return set;
                    }
                }
            }
        }
    }

    /// The set of `addresses`, counted.
    fn listing(&mut self, addresses: &[SocketAddr]) -> BTreeMap<SocketAddr, SocketAddr> {
        self.listed = addresses.len();
        addresses
            .iter()
            .map(|address| (*address, *address))
            .collect()
    }

    /// After a failed lookup: an empty set if the name server said there is no address (the
    /// name does not exist, or has no such records), else nothing (the addresses known stay)
    /// and the next query after the retry delay.
    fn failed(
        &mut self,
        error: &DnsError,
        asked: Instant,
    ) -> Option<BTreeMap<SocketAddr, SocketAddr>> {
        let name = &*self.source.name;
        let records = self.records;
        match error.kind() {
            _ if error.says_no_address() => {
                self.backoff.succeeded();
                let floor = self.source.resolver.settings().ttl_floor;
                self.next = asked
                    .checked_add(floor.max(WATCH_MIN_INTERVAL))
                    .map_or(NextQuery::Never, NextQuery::At);
                if self.listed > 0 {
                    tracing::warn!(
                        name,
                        %records,
                        %error,
                        removed = self.listed,
                        "DNS watch: the name lists no address now; every address leaves"
                    );
                } else {
                    debug!(name, %records, %error, "DNS watch: no address");
                }
                Some(self.listing(&[]))
            }
            DnsErrorKind::InvalidName => {
                tracing::error!(
                    name,
                    %records,
                    %error,
                    "DNS watch: the name is invalid; nothing to watch"
                );
                self.next = NextQuery::Never;
                None
            }
            _ => {
                match self.backoff.failed(name) {
                    Some(delay) => {
                        tracing::warn!(
                            name,
                            %records,
                            %error,
                            failures = self.backoff.failures(),
                            known = self.listed,
                            retry_in = ?delay,
                            "DNS watch: lookup failed; keeping the addresses known"
                        );
                        self.next = Instant::now()
                            .checked_add(delay)
                            .map_or(NextQuery::Never, NextQuery::At);
                    }
                    None => {
                        tracing::error!(
                            name,
                            %records,
                            %error,
                            failures = self.backoff.failures(),
                            known = self.listed,
                            "DNS watch: lookup failed, and the retry policy gives up; keeping \
                             the addresses known, and asking no more"
                        );
                        self.next = NextQuery::Never;
                    }
                }
                None
            }
        }
    }
}

// === errors ===

/// Which records a lookup asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordKind {
    Host,
    Srv,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Host => "A/AAAA",
            Self::Srv => "SRV",
        })
    }
}

/// What kind of failure a [`DnsError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DnsErrorKind {
    /// The name is not a valid DNS name (empty, say); nothing was asked.
    InvalidName,
    /// The name does not exist (`NXDOMAIN`).
    NoSuchName,
    /// The name exists but has no records of the type asked for (an empty `NOERROR` answer),
    /// or has SRV records whose only target is `.` ("no service here").
    NoRecords,
    /// No answer within the [query timeout](Resolver::query_timeout).
    Timeout,
    /// Anything else: the server refused or failed (`REFUSED`, `SERVFAIL`), or could not be
    /// reached.
    Other,
}

/// A failed DNS lookup: names the query, the kind of failure and the name server.
///
/// `DNS lookup of A/AAAA records for "api.example.test" failed: no such name (NXDOMAIN) from
/// 127.0.0.1:5353`. The layer reports it as the cause of a failed attempt (the `source` of a
/// [`ConnectError`](crate::ConnectError) of kind
/// [`Discovery`](crate::ConnectErrorKind::Discovery)); its own `source` is hickory-resolver's
/// error, when there is one.
#[derive(Clone, Debug)]
pub struct DnsError {
    kind: DnsErrorKind,
    records: RecordKind,
    name: Arc<str>,
    reason: String,
    source: Option<NetError>,
    /// Whether the name servers said there is no address (`NXDOMAIN` or no records; for SRV,
    /// for every target), rather than failing to answer.
    no_address: bool,
}

impl DnsError {
    /// What kind of failure this is.
    pub fn kind(&self) -> DnsErrorKind {
        self.kind
    }

    /// Whether the name servers answered that there is no address, for a watch: the name
    /// does not exist or has no such records (for SRV: no record, or every target is such a
    /// name).
    fn says_no_address(&self) -> bool {
        self.no_address
    }

    /// The name looked up, as given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DNS lookup of {} records for \"{}\" failed: {}",
            self.records, self.name, self.reason
        )
    }
}

impl Error for DnsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_ref().map(|error| error as _)
    }
}

/// The kind of a hickory error.
fn classify(error: &NetError) -> DnsErrorKind {
    if error.is_nx_domain() {
        DnsErrorKind::NoSuchName
    } else if error.is_no_records_found() {
        DnsErrorKind::NoRecords
    } else if matches!(error, NetError::Timeout) {
        DnsErrorKind::Timeout
    } else {
        DnsErrorKind::Other
    }
}

/// The system's DNS configuration could not be read: see [`Resolver::system`].
#[derive(Debug)]
pub struct SystemConfigError(NetError);

impl fmt::Display for SystemConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot use the system's DNS configuration (/etc/resolv.conf on Unix): {}",
            self.0
        )
    }
}

impl Error for SystemConfigError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn record(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 1,
            target: Name::from_str(target).unwrap(),
        }
    }

    fn targets(records: &[SrvRecord]) -> Vec<String> {
        records.iter().map(|r| r.target.to_string()).collect()
    }

    /// Priority decides the order whatever the weights; weight 0 comes after positive
    /// weights of its priority, every time (512 seeds).
    #[test]
    fn rfc2782_order_respects_priority_and_puts_weight_zero_last() {
        let records = vec![
            record(20, 100, "c.test"),
            record(10, 0, "zero.test"),
            record(10, 1, "light.test"),
            record(30, 0, "d.test"),
        ];
        for seed in 0..512 {
            let ordered = rfc2782_order(records.clone(), &mut StdRng::seed_from_u64(seed));
            assert_eq!(
                targets(&ordered),
                ["light.test", "zero.test", "c.test", "d.test"],
                "seed {seed}"
            );
        }
    }

    /// Within a priority, a record of weight 9 comes first about 9 times in 10 (2,000
    /// seeds: the count is within 8 standard deviations of 1,800).
    #[test]
    fn rfc2782_order_follows_weights_within_a_priority() {
        let records = vec![record(1, 1, "light.test"), record(1, 9, "heavy.test")];
        let heavy_first = (0..2000)
            .filter(|&seed| {
                let ordered = rfc2782_order(records.clone(), &mut StdRng::seed_from_u64(seed));
                ordered[0].target.to_string() == "heavy.test"
            })
            .count();
        println!("heavy first {heavy_first} of 2000");
        assert!((1700..=1900).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn invalid_names_are_told_apart_without_a_panic() {
        assert!(matches!(parse_name(""), Target::Invalid(_)));
        assert!(matches!(parse_name("  "), Target::Invalid(_)));
        assert!(matches!(parse_name("."), Target::Invalid(_)));
        assert!(matches!(parse_name("a b.test"), Target::Invalid(_)));
        assert!(matches!(parse_name(&"x".repeat(64)), Target::Invalid(_)));
        assert!(matches!(parse_name("api.example.test"), Target::Name(_)));
    }

    #[test]
    fn an_unchanged_answer_keeps_its_turn_and_a_changed_one_starts_over() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "[::1]:1".parse().unwrap();
        let now = Instant::now();
        let mut kept = None;
        assert_eq!(
            keep(&mut kept, Answer::new(vec![a, b], vec![], Some(now))).take_next(),
            a
        );
        // The same records in another order: the turn goes on.
        assert_eq!(
            keep(&mut kept, Answer::new(vec![b, a], vec![], Some(now))).take_next(),
            b
        );
        assert_eq!(kept.as_mut().unwrap().take_next(), a);
        // Other records: from the start.
        assert_eq!(
            keep(&mut kept, Answer::new(vec![b], vec![], Some(now))).take_next(),
            b
        );
    }

    /// For a watch, a lookup says there is no address when the name servers said so, for
    /// SRV of every target; a target that did not answer makes it a failure instead.
    #[test]
    fn no_address_only_when_the_servers_say_so_for_every_target() {
        let resolver = Resolver::with_name_server("127.0.0.1:53".parse().unwrap());
        let srv = resolver.srv("_http._tcp.example.test");
        let target = |name: &str| Name::from_str(name).unwrap();
        let failed = |kinds: &[DnsErrorKind]| {
            let failures = kinds
                .iter()
                .enumerate()
                .map(|(n, kind)| (target(&format!("t{n}.example.test")), *kind, None))
                .collect();
            srv.source.targets_failed(failures).says_no_address()
        };
        assert!(failed(&[DnsErrorKind::NoSuchName, DnsErrorKind::NoRecords]));
        assert!(!failed(&[DnsErrorKind::NoSuchName, DnsErrorKind::Timeout]));
        assert!(!failed(&[DnsErrorKind::Other]));
        let source = &srv.source;
        let error = |kind| source.error(RecordKind::Srv, kind, None).says_no_address();
        assert!(error(DnsErrorKind::NoSuchName));
        assert!(error(DnsErrorKind::NoRecords));
        assert!(!error(DnsErrorKind::Timeout));
        assert!(!error(DnsErrorKind::Other));
        assert!(!source.invalid(RecordKind::Srv, "empty").says_no_address());
    }

    /// The floor raises a short TTL, leaves a longer one, and a floor past the clock's range
    /// keeps the answer for ever instead of overflowing.
    #[test]
    fn the_floor_raises_short_ttls_only_and_never_overflows() {
        let resolver = Resolver::with_name_server("127.0.0.1:53".parse().unwrap());
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        let host = resolver.host("api.example.test", 80);
        assert_eq!(
            host.source.keep_until(now, now),
            Some(now + DEFAULT_TTL_FLOOR)
        );
        assert_eq!(host.source.keep_until(now, later), Some(later));
        let host = resolver
            .ttl_floor(Duration::MAX)
            .host("api.example.test", 80);
        assert_eq!(host.source.keep_until(now, later), None);
    }
}
