//! etcd as an address source: a [`Catalog`] of the replicas registered under a key prefix,
//! and [`register`], which publishes a server's address there under a lease kept alive.
//!
//! A replica publishes `host:port` as the value of a key `<prefix><address>-<lease id>`,
//! attached to a lease of a few seconds that a task keeps alive. When the replica dies, its
//! keep-alive stops and etcd deletes the key once the lease lapses (after its TTL); when it
//! stops cleanly, [`Registration::deregister`] (or dropping the [`Registration`]) revokes the
//! lease, which deletes the key at once.
//!
//! A client asks the [`Catalog`] before every connection attempt (it is an
//! [`AddressSource`]`<String>`, and the HTTP connectors dial a `host:port` `String`): each
//! lookup reads the prefix and takes the next replica in turn, in the order of the keys. So a
//! dead replica still listed (its lease has not lapsed yet) costs one failed attempt: the next
//! attempt goes to the replica after it.
//!
//! # Example
//!
//! The server side registers its address; the client side connects through the catalog:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer,
//!     discovery::etcd::{Catalog, register},
//!     http::Http2Connector,
//! };
//! use tower::{Service, ServiceExt};
//!
//! # async fn server() -> Result<(), BoxError> {
//! // On each replica, once it listens: publish the address for as long as the process lives.
//! let registration = register(
//!     ["127.0.0.1:2379"],
//!     "/services/billing/",
//!     "10.0.0.7:8080",
//!     Duration::from_secs(5),
//! )
//! .await?;
//! // ... serve ...
//! registration.deregister().await?;
//! # Ok(()) }
//!
//! # async fn client() -> Result<(), BoxError> {
//! // On the client: one persistent HTTP/2 connection to some replica of `billing`.
//! let catalog = Catalog::new(["127.0.0.1:2379"], "/services/billing/")?;
//! let mut billing = PersistentConnectionLayer::new(catalog)
//!     .server_name("billing")
//!     .retry_delay(|| Duration::from_secs(1))
//!     .connect_timeout(Duration::from_secs(5))
//!     .http2(Http2Connector::<Empty<Bytes>>::new());
//! let request = http::Request::get("/invoices").body(Empty::new())?;
//! let response = billing.ready().await?.call(request).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! # let _ = (server, client);
//! ```
//!
//! # Watching: one connection per replica
//!
//! [`Catalog::watch`] follows the prefix with an etcd watch: a stream of
//! [`Change`]s (a [`Changes`]`<String, String>`, keyed by the etcd
//! key, the address as value) that starts with the replicas registered now and then sends each
//! registration, deregistration and lapsed lease. It is what
//! [`replicas::Replicas`](crate::replicas::Replicas) takes to keep one persistent connection
//! per replica behind a balancer:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer, discovery::etcd::Catalog, http::Http2Connector,
//!     replicas::Replicas,
//! };
//! use tower::ServiceExt;
//!
//! # async fn client() -> Result<(), BoxError> {
//! let catalog = Catalog::new(["127.0.0.1:2379"], "/services/billing/")?;
//! let layer = PersistentConnectionLayer::new(catalog.clone())
//!     .server_name("billing")
//!     .retry_delay(|| Duration::from_secs(1));
//! let billing = Replicas::http2(catalog.watch(), layer, Http2Connector::new()).balanced(64);
//! let request = http::Request::get("/invoices").body(Empty::<Bytes>::new())?;
//! let response = billing.oneshot(request).await?;
//! # let _ = response;
//! # Ok(()) }
//! # let _ = client;
//! ```
//!
//! The watch never ends and never fails: while etcd cannot be reached it keeps the replicas it
//! knows, and once it is back it resumes after the last revision it saw, so that no change is
//! lost or sent twice (or, if etcd compacted its history meanwhile, it reads the prefix again
//! and sends the difference). See [`Catalog::watch`] and [`Catalog::watch_retry_policy`].
//!
//! # Failures
//!
//! The catalog connects to etcd lazily, on its first lookup, so an etcd that is down when the
//! client starts is not a construction error: each lookup that cannot read the prefix is a
//! failed attempt ([`ConnectErrorKind::Discovery`](crate::ConnectErrorKind::Discovery)) whose
//! [`EtcdError`] names the endpoints and the prefix, and the layer tries again after its retry
//! delay. A lookup is bounded by the catalog's [request
//! timeout](Catalog::request_timeout) (default 5 s), and the whole attempt by the layer's
//! [`connect_timeout`](crate::PersistentConnectionLayer::connect_timeout), whichever ends
//! first.
//!
//! A value under the prefix that is not `host:port` (with a numeric port) is skipped, with a
//! warning naming its key and value; a prefix without any usable value is an error naming the
//! prefix.
//!
//! The connection to etcd lives in the Tokio runtime of the first lookup (or of `register`):
//! use a catalog within one runtime.
//!
//! [`AddressSource`]: super::AddressSource

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    future::Future,
    net::Ipv6Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions, WatchResponse, WatchStream,
};
use futures_util::{future::BoxFuture, stream};
use tokio::{sync::OnceCell, task::JoinHandle, time::Instant};
use tower::discover::Change;

use super::{
    AddressSource, Changes,
    backoff::{self, WatchBackoff},
    diff,
};
use crate::retry::{Exponential, RetryPolicy, SharedPolicy};

/// The default [request timeout](Catalog::request_timeout) of one etcd request.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The smallest lease TTL [`register`] accepts.
const MIN_TTL: Duration = Duration::from_secs(1);
/// The largest lease TTL [`register`] accepts: a dead replica stays listed this long.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// The first delay between two attempts to register again after the lease was lost.
const REREGISTER_DELAY_MIN: Duration = Duration::from_millis(100);
/// The largest delay between two attempts to register again.
const REREGISTER_DELAY_MAX: Duration = Duration::from_secs(1);
/// HTTP/2 keep-alive of the connection to etcd: a ping this often while a request or the
/// lease's keep-alive stream is open (etcd's default minimum is 5 s).
const PING_INTERVAL: Duration = Duration::from_secs(10);

// === EtcdError ===

/// What kind of failure an [`EtcdError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EtcdErrorKind {
    /// An argument was refused before any request: an endpoint that is not `host:port` or
    /// `http://host:port`, an empty prefix, a TTL out of bounds, an address that is not
    /// `host:port`.
    InvalidInput,
    /// etcd refused or failed a request, or could not be reached.
    Request,
    /// A request got no answer within the request timeout.
    Timeout,
    /// The prefix holds no usable `host:port` value.
    NoReplica,
}

/// An error of the etcd catalog or of a registration. Its text names the endpoints, the
/// request and its prefix or key, and the root cause (which etcd-client's own text leaves
/// out); its [`source`](std::error::Error::source) is etcd-client's error when there is one.
///
/// ```text
/// etcd at 127.0.0.1:2379: reading prefix "/services/billing/" failed: Unavailable: tcp connect error: Connection refused (os error 111)
/// ```
#[derive(Debug)]
pub struct EtcdError {
    kind: EtcdErrorKind,
    message: String,
    source: Option<etcd_client::Error>,
}

impl EtcdError {
    /// What kind of failure this is.
    pub fn kind(&self) -> EtcdErrorKind {
        self.kind
    }

    fn invalid(message: String) -> Self {
        Self {
            kind: EtcdErrorKind::InvalidInput,
            message,
            source: None,
        }
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}

/// etcd-client's error with the cause it hides: its `Display` says only "transport error"
/// for a refused connection (or the gRPC status with its cause's `Debug`), and it has no
/// `source`. So: the error in short, then its root cause.
fn describe(error: &etcd_client::Error) -> String {
    let (mut text, cause): (String, Option<&(dyn std::error::Error + 'static)>) = match error {
        etcd_client::Error::TransportError(error) => (
            "transport error".to_owned(),
            std::error::Error::source(error),
        ),
        etcd_client::Error::GRpcStatus(status) => (
            format!("{:?}: {}", status.code(), status.message()),
            std::error::Error::source(status),
        ),
        error => (error.to_string(), None),
    };
    // The root cause; bounded, as nothing forbids a cycle.
    let mut root = cause;
    for _ in 0..16 {
        match root.and_then(|error| error.source()) {
            Some(deeper) => root = Some(deeper),
            None => break,
        }
    }
    if let Some(root) = root {
        let line = root.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
    }
    text
}

/// What a request is about, for the error texts: the endpoints and the request timeout.
#[derive(Clone, Debug)]
struct Etcd {
    endpoints: Vec<String>,
    request_timeout: Duration,
}

impl Etcd {
    fn new<I>(endpoints: I) -> Result<Self, EtcdError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|endpoint| endpoint.as_ref().trim().to_owned())
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::invalid(
                "etcd: no endpoint given (expected e.g. \"127.0.0.1:2379\")".into(),
            ));
        }
        for endpoint in &endpoints {
            check_endpoint(endpoint)?;
        }
        Ok(Self {
            endpoints,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// `etcd at a,b`.
    fn at(&self) -> String {
        format!("etcd at {}", self.endpoints.join(","))
    }

    fn failed(&self, what: &str, error: etcd_client::Error) -> EtcdError {
        EtcdError {
            kind: EtcdErrorKind::Request,
            message: format!("{}: {what} failed: {}", self.at(), describe(&error)),
            source: Some(error),
        }
    }

    fn timed_out(&self, what: &str) -> EtcdError {
        EtcdError {
            kind: EtcdErrorKind::Timeout,
            message: format!(
                "{}: {what} timed out after {:?}",
                self.at(),
                self.request_timeout
            ),
            source: None,
        }
    }

    /// Runs `request`, bounded by the request timeout; errors name `what`.
    async fn request<T>(
        &self,
        what: impl FnOnce() -> String,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.failed(&what(), error)),
            Err(_) => Err(self.timed_out(&what())),
        }
    }

    /// A client for the endpoints. It connects on its first request (and again after the
    /// connection is lost), so this does no I/O; it needs a Tokio runtime.
    async fn client(&self) -> Result<Client, EtcdError> {
        // No per-request timeout of tonic's: `request` bounds each request, with an error
        // that says which one timed out. The connect timeout ends a connect that hangs, which
        // would otherwise hold up the requests after it.
        let options = ConnectOptions::new()
            .with_connect_timeout(self.request_timeout)
            .with_keep_alive(PING_INTERVAL, self.request_timeout);
        self.request(
            || "setting up the client".to_owned(),
            Client::connect(&self.endpoints, Some(options)),
        )
        .await
    }
}

/// Whether `endpoint` is `host:port`, `http://host:port` (a trailing `/` allowed).
fn check_endpoint(endpoint: &str) -> Result<(), EtcdError> {
    let refuse = |why: &str| {
        EtcdError::invalid(format!(
            "etcd endpoint {endpoint:?}: {why} (expected host:port or http://host:port)"
        ))
    };
    if endpoint.starts_with("https://") {
        return Err(refuse(
            "https is not supported (etcd-client is built without TLS)",
        ));
    }
    let authority = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains("://") {
        return Err(refuse("unknown scheme"));
    }
    parse_host_port(authority).map_err(refuse)
}

/// Checks `host:port`: a host name or IPv4 address, or an IPv6 address in brackets, then a
/// port from 1 to 65535. Returns why not.
fn parse_host_port(text: &str) -> Result<(), &'static str> {
    let port = if let Some(rest) = text.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or("no ]:port after an IPv6 address")?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address in the brackets")?;
        port
    } else {
        let (host, port) = text.rsplit_once(':').ok_or("no :port")?;
        if host.is_empty() {
            return Err("no host");
        }
        let host_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !host.chars().all(host_chars) {
            return Err("the host is not a name or an address (IPv6 goes in brackets)");
        }
        port
    };
    match port.parse::<u16>() {
        Ok(0) => Err("port 0"),
        Ok(_) if port.chars().all(|c| c.is_ascii_digit()) => Ok(()),
        _ => Err("the port is not a number from 1 to 65535"),
    }
}

// === Catalog ===

/// The replicas registered under a key prefix in etcd, as an
/// [`AddressSource`]`<String>`: each lookup reads the prefix and gives the next replica's
/// `host:port`, in turn over the keys in order.
///
/// Building it does no I/O: it connects on its first lookup. Clones share the connection and
/// the turn. See the [module](self) documentation.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<CatalogInner>,
}

struct CatalogInner {
    etcd: Etcd,
    prefix: String,
    client: OnceCell<Client>,
    /// The key of the replica given last: the next lookup gives the one after it.
    last: Mutex<Option<String>>,
    /// The retry delay of [`Catalog::watch`].
    watch_retry: SharedPolicy,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("endpoints", &self.inner.etcd.endpoints)
            .field("prefix", &self.inner.prefix)
            .field("request_timeout", &self.inner.etcd.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// The replicas under `prefix` (e.g. `"/services/billing/"`; end it with `/`, or
    /// `/services/bill` also finds `/services/billing/..`) in the etcd cluster at `endpoints`
    /// (`"127.0.0.1:2379"` or `"http://127.0.0.1:2379"`).
    ///
    /// Does not connect: an etcd that cannot be reached makes each lookup fail, not this.
    ///
    /// # Errors
    ///
    /// [`EtcdErrorKind::InvalidInput`] if there is no endpoint, if an endpoint is not
    /// `host:port` or `http://host:port` (`https` is not supported), or if `prefix` is empty.
    pub fn new<I>(endpoints: I, prefix: impl Into<String>) -> Result<Self, EtcdError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let etcd = Etcd::new(endpoints)?;
        let prefix = check_prefix(prefix.into())?;
        Ok(Self::from_parts(
            etcd,
            prefix,
            backoff::shared(default_watch_retry()),
        ))
    }

    fn from_parts(etcd: Etcd, prefix: String, watch_retry: SharedPolicy) -> Self {
        Self {
            inner: Arc::new(CatalogInner {
                etcd,
                prefix,
                client: OnceCell::new(),
                last: Mutex::new(None),
                watch_retry,
            }),
        }
    }

    /// Bounds each request to etcd (the read of a lookup, and connecting for it): a request
    /// without an answer by then fails with an error of kind [`EtcdErrorKind::Timeout`] naming
    /// the request. A lookup is also bounded by the layer's
    /// [`connect_timeout`](crate::PersistentConnectionLayer::connect_timeout); this one makes
    /// its error say what hung.
    ///
    /// Default is 5 seconds.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: every request would fail.
    pub fn request_timeout(self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "Catalog::request_timeout: a zero timeout fails every request"
        );
        let mut etcd = self.inner.etcd.clone();
        etcd.request_timeout = timeout;
        Self::from_parts(
            etcd,
            self.inner.prefix.clone(),
            self.inner.watch_retry.clone(),
        )
    }

    /// The etcd endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.etcd.endpoints
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The replicas registered now: `(key, address)` for each value under the prefix that is
    /// `host:port`, in the order of the keys. Values that are not `host:port` are left out,
    /// with a warning. An empty list is no error here.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached or fails the read, or does not answer within the [request
    /// timeout](Self::request_timeout).
    pub async fn replicas(&self) -> Result<Vec<(String, String)>, EtcdError> {
        Ok(self.read().await?.0)
    }

    /// The client, set up at the first call (no I/O).
    async fn client(&self) -> Result<Client, EtcdError> {
        let inner = &self.inner;
        Ok(inner
            .client
            .get_or_try_init(|| inner.etcd.client())
            .await?
            .clone())
    }

    /// Reads the prefix: the usable replicas in key order, and how many values were skipped.
    async fn read(&self) -> Result<(Vec<(String, String)>, usize), EtcdError> {
        let (replicas, skipped, _) = self.read_at().await?;
        Ok((replicas, skipped))
    }

    /// [`read`](Self::read), and the revision of the store the answer reflects.
    async fn read_at(&self) -> Result<(Vec<(String, String)>, usize, i64), EtcdError> {
        let inner = &self.inner;
        let etcd = &inner.etcd;
        let what = || format!("reading prefix {:?}", inner.prefix);
        let mut client = self.client().await?;
        // Serializable: the member answers from its own copy, without a round of consensus.
        // A lookup then works while the cluster has lost its quorum (the replicas may well be
        // up), and costs the cluster less; the price is a list that may lag by moments, which
        // at worst offers a replica that just left: one failed attempt, and the next lookup
        // gives the next replica.
        let options = GetOptions::new().with_prefix().with_serializable();
        let response = etcd
            .request(what, client.get(inner.prefix.as_str(), Some(options)))
            .await?;
        let revision = response.header().map_or(0, |header| header.revision());
        let mut replicas = Vec::new();
        let mut skipped = 0;
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match address_of(&key, kv.value()) {
                Some(address) => replicas.push((key, address)),
                None => skipped += 1,
            }
        }
        replicas.sort();
        Ok((replicas, skipped, revision))
    }

    /// The address for the next attempt: the replica after the one given last.
    async fn next(self) -> Result<String, EtcdError> {
        let (replicas, skipped) = self.read().await?;
        let mut last = self.inner.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some((key, address)) = next_in_turn(&replicas, last.as_deref()) else {
            let skipped = match skipped {
                0 => String::new(),
                1 => " (1 value skipped: not host:port)".to_owned(),
                n => format!(" ({n} values skipped: not host:port)"),
            };
            return Err(EtcdError {
                kind: EtcdErrorKind::NoReplica,
                message: format!(
                    "{}: no replica under prefix {:?}{skipped}",
                    self.inner.etcd.at(),
                    self.inner.prefix
                ),
                source: None,
            });
        };
        *last = Some(key.clone());
        Ok(address.clone())
    }
}

/// The address in the value of `key`, trimmed; `None`, with a warning naming the key and the
/// value, if it is not `host:port`.
fn address_of(key: &str, value: &[u8]) -> Option<String> {
    let value = String::from_utf8_lossy(value);
    match parse_host_port(value.trim()) {
        Ok(()) => Some(value.trim().to_owned()),
        Err(why) => {
            tracing::warn!(
                key = %key,
                value = %value,
                "etcd catalog: skipping a value that is not host:port ({why})"
            );
            None
        }
    }
}

/// The replica after `last` in key order, wrapping around; the first one without a `last`.
fn next_in_turn<'a>(
    replicas: &'a [(String, String)],
    last: Option<&str>,
) -> Option<&'a (String, String)> {
    let after = last.and_then(|last| replicas.iter().find(|(key, _)| key.as_str() > last));
    after.or_else(|| replicas.first())
}

fn check_prefix(prefix: String) -> Result<String, EtcdError> {
    if prefix.is_empty() {
        return Err(EtcdError::invalid(
            "etcd: the key prefix is empty (it would take every key of the cluster; expected \
             e.g. \"/services/billing/\")"
                .into(),
        ));
    }
    Ok(prefix)
}

impl AddressSource<String> for Catalog {
    type Error = EtcdError;
    type Future = BoxFuture<'static, Result<String, EtcdError>>;

    fn get_address(&self) -> Self::Future {
        Box::pin(self.clone().next())
    }
}

// === watch ===

/// The default [`Catalog::watch_retry_policy`]: 100 ms, then ×1.6 per failure in a row, at
/// most 30 s.
fn default_watch_retry() -> Exponential {
    Exponential::new(Duration::from_millis(100), 1.6, Duration::from_secs(30))
}

impl Catalog {
    /// The replicas under the prefix, as they change: what [`Replicas`] takes to keep one
    /// persistent connection per replica. Each replica's key is its etcd key, its address the
    /// key's value (`host:port`).
    ///
    /// The stream starts with an [`Insert`](Change::Insert) for each replica registered now
    /// (one read of the prefix, at some revision R), then follows an etcd watch of the prefix
    /// from R + 1:
    ///
    /// - a key put with a `host:port` value is an `Insert` (a key whose value changed is a new
    ///   `Insert`; a put of the same value sends nothing);
    /// - a key deleted, by [`Registration::deregister`] or because its lease lapsed (a dead
    ///   replica, after its TTL), is a [`Remove`](Change::Remove);
    /// - a value that is not `host:port` is skipped with a warning, as lookups skip it; a
    ///   replica whose value becomes one is removed.
    ///
    /// It never ends and never fails. When the watch breaks (etcd down or unreachable, the
    /// stream closed; an etcd that falls silent is noticed by the HTTP/2 keep-alive of the
    /// connection, a ping every 10 s answered within the [request
    /// timeout](Self::request_timeout)), the replicas known stay as they are (nothing is
    /// removed), the failure is logged at `WARN`, and the watch is opened again after the [retry
    /// delay](Self::watch_retry_policy), from the revision after the last one seen: every
    /// change made meanwhile then arrives, once, in order. If etcd has compacted its history
    /// past that revision meanwhile, the prefix is read again, and the stream sends exactly
    /// the difference between the replicas known and those read (removals first, then
    /// insertions; a key added and deleted meanwhile is not seen at all). Progress
    /// notifications keep the revision seen recent while the prefix is quiet, so that a
    /// compaction less often forces a read.
    ///
    /// The stream does nothing until it is polled (it is driven by its consumer; no task is
    /// spawned), and dropping it cancels the watch in etcd. It uses the catalog's connection
    /// to etcd (shared with its lookups and clones), in the Tokio runtime that polls it first.
    ///
    /// # Example
    ///
    /// One persistent HTTP/2 connection per registered replica, balanced:
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use persistent_connection::{
    ///     BoxError, PersistentConnectionLayer, discovery::etcd::Catalog, http::Http2Connector,
    ///     replicas::Replicas,
    /// };
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let catalog = Catalog::new(["127.0.0.1:2379"], "/services/billing/")?;
    /// let layer = PersistentConnectionLayer::new(catalog.clone())
    ///     .server_name("billing")
    ///     .retry_delay(|| Duration::from_secs(1));
    /// let client = Replicas::http2(catalog.watch(), layer, Http2Connector::new()).balanced(64);
    ///
    /// let request = http::Request::get("/invoices").body(Empty::<Bytes>::new())?;
    /// let response = client.oneshot(request).await?;
    /// println!("{}", response.status());
    /// # Ok(()) }
    /// ```
    ///
    /// Or follow the changes by hand:
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use persistent_connection::discovery::etcd::Catalog;
    /// use tower::discover::Change;
    ///
    /// # async fn run() -> Result<(), persistent_connection::BoxError> {
    /// let catalog = Catalog::new(["127.0.0.1:2379"], "/services/billing/")?;
    /// let mut changes = catalog.watch();
    /// while let Some(change) = changes.next().await {
    ///     match change {
    ///         Change::Insert(key, address) => println!("{key} is at {address}"),
    ///         Change::Remove(key) => println!("{key} left"),
    ///     }
    /// }
    /// # Ok(()) }
    /// # let _ = run;
    /// ```
    ///
    /// [`Replicas`]: crate::replicas::Replicas
    pub fn watch(&self) -> Changes<String, String> {
        let watcher = Watcher {
            catalog: self.clone(),
            known: BTreeMap::new(),
            next_revision: None,
            stream: None,
            backoff: WatchBackoff::new(self.inner.watch_retry.clone()),
            pending: VecDeque::new(),
        };
        Box::pin(stream::unfold(watcher, |mut watcher| async move {
            let change = watcher.next_change().await;
            Some((change, watcher))
        }))
    }

    /// The delay before [`watch`](Self::watch) tries again after a failure (etcd
    /// unreachable, the watch stream broken, a request without an answer within the [request
    /// timeout](Self::request_timeout)).
    ///
    /// The policy is asked after each failure, with the failures in a row in its
    /// [`RetryContext`](crate::retry::RetryContext) counted as the layer's driver counts
    /// them: after the first failure it is asked for 0 failures (so the first retry waits an
    /// [`Exponential`]'s initial delay), after the second for 1, and so on. The count starts
    /// over once the watch is open again. The delay is used as is, without jitter, clamped to
    /// [`MAX_RETRY_DELAY`](crate::retry::MAX_RETRY_DELAY). A policy that gives up (`None`)
    /// stops the attempts: the watch keeps its last known replicas and sends nothing more
    /// (it does not end), with an error in the log.
    ///
    /// Default: `Exponential::new(100 ms, 1.6, 30 s)`. The shape of
    /// [`Exponential::grpc`], but a first retry after 100 ms, as a local etcd that restarts
    /// is back within moments, and a cap of 30 s, so that changes made while etcd was
    /// unreachable are followed within 30 s of its return.
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_connection::{discovery::etcd::Catalog, retry::Exponential};
    ///
    /// let catalog = Catalog::new(["127.0.0.1:2379"], "/services/billing/")?
    ///     .watch_retry_policy(Exponential::new(
    ///         Duration::from_millis(500),
    ///         2.0,
    ///         Duration::from_secs(10),
    ///     ));
    /// # let _ = catalog;
    /// # Ok::<(), persistent_connection::BoxError>(())
    /// ```
    pub fn watch_retry_policy(self, policy: impl RetryPolicy) -> Self {
        Self::from_parts(
            self.inner.etcd.clone(),
            self.inner.prefix.clone(),
            backoff::shared(policy),
        )
    }
}

/// The state of one [`Catalog::watch`].
struct Watcher {
    catalog: Catalog,
    /// The replicas sent so far, by key.
    known: BTreeMap<String, String>,
    /// The revision the watch (re)starts from: one past the last one seen. `None` until the
    /// prefix has been read, and after the history was compacted past it.
    next_revision: Option<i64>,
    /// The open watch, if any.
    stream: Option<WatchStream>,
    backoff: WatchBackoff,
    /// Changes found but not sent yet.
    pending: VecDeque<Change<String, String>>,
}

/// What a watch response says, beyond its events.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Events (possibly none) or a progress notification: the watch goes on.
    Events,
    /// The watch was created.
    Created,
    /// The revision asked for was compacted: etcd keeps revisions from this one.
    Compacted(i64),
    /// The watch was canceled, for this reason.
    Canceled(String),
}

impl Watcher {
    /// The next change: reads, watches, and retries until there is one.
    async fn next_change(&mut self) -> Change<String, String> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return change;
            }
            if let Err(error) = self.step().await {
                self.stream = None;
                self.wait_after(&error).await;
            }
        }
    }

    fn prefix(&self) -> &str {
        &self.catalog.inner.prefix
    }

    /// One step: reads the prefix, or opens the watch, or takes its next response.
    async fn step(&mut self) -> Result<(), EtcdError> {
        let Some(from) = self.next_revision else {
            return self.read().await;
        };
        let Some(stream) = self.stream.as_mut() else {
            return self.open(from).await;
        };
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(self.watch_error("etcd ended the watch stream".to_owned())),
            Err(error) => {
                let what = format!("watching prefix {:?}", self.prefix());
                return Err(self.catalog.inner.etcd.failed(&what, error));
            }
        };
        match self.handle(&response) {
            Answer::Events | Answer::Created => Ok(()),
            Answer::Compacted(compacted) => {
                self.compacted(compacted);
                Ok(())
            }
            Answer::Canceled(reason) => Err(self.canceled(&reason)),
        }
    }

    /// Reads the prefix: the difference from the replicas known is to be sent, and the watch
    /// starts after the revision read.
    async fn read(&mut self) -> Result<(), EtcdError> {
        let (replicas, _, revision) = self.catalog.read_at().await?;
        let replicas: BTreeMap<String, String> = replicas.into_iter().collect();
        self.pending.extend(diff(&self.known, &replicas));
        tracing::debug!(
            prefix = %self.prefix(),
            revision,
            replicas = replicas.len(),
            "etcd watch: prefix read"
        );
        self.known = replicas;
        self.next_revision = Some(revision + 1);
        Ok(())
    }

    /// Opens the watch from revision `from`; returns once etcd has created it.
    async fn open(&mut self, from: i64) -> Result<(), EtcdError> {
        let etcd = &self.catalog.inner.etcd;
        let what = || format!("watching prefix {:?} from revision {from}", self.prefix());
        let mut client = self.catalog.client().await?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut stream = etcd
            .request(what, client.watch(self.prefix(), Some(options)))
            .await?;
        // Its first answer says whether it was created: bounded, as a request is.
        let Some(first) = etcd.request(what, stream.message()).await? else {
            return Err(self.watch_error(format!(
                "etcd ended the watch stream from revision {from} before creating it"
            )));
        };
        match self.handle(&first) {
            Answer::Created | Answer::Events => {}
            Answer::Compacted(compacted) => {
                self.compacted(compacted);
                return Ok(());
            }
            Answer::Canceled(reason) => return Err(self.canceled(&reason)),
        }
        if self.backoff.failures() > 0 {
            tracing::info!(
                prefix = %self.prefix(),
                from_revision = from,
                failures = self.backoff.failures(),
                "etcd watch: open again"
            );
        } else {
            tracing::debug!(prefix = %self.prefix(), from_revision = from, "etcd watch: open");
        }
        self.backoff.succeeded();
        self.stream = Some(stream);
        Ok(())
    }

    /// Takes a response: its events become changes, and the revision seen moves on.
    fn handle(&mut self, response: &WatchResponse) -> Answer {
        if response.compact_revision() != 0 {
            return Answer::Compacted(response.compact_revision());
        }
        if response.canceled() {
            return Answer::Canceled(response.cancel_reason().to_owned());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = match event.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            };
            if let Some(change) = apply(&mut self.known, key, value) {
                self.pending.push_back(change);
            }
            self.seen(kv.mod_revision());
        }
        if response.created() {
            return Answer::Created;
        }
        if response.events().is_empty() {
            // A progress notification: every change up to its revision has been sent.
            if let Some(header) = response.header() {
                self.seen(header.revision());
            }
        }
        Answer::Events
    }

    /// Revision `revision` has been seen: the watch would resume after it.
    fn seen(&mut self, revision: i64) {
        let next = revision.saturating_add(1);
        if self.next_revision.is_some_and(|current| next > current) {
            self.next_revision = Some(next);
        }
    }

    /// The revision to resume from was compacted: read the prefix again, at once.
    fn compacted(&mut self, compacted: i64) {
        tracing::warn!(
            prefix = %self.prefix(),
            from_revision = ?self.next_revision,
            compacted_revision = compacted,
            "etcd watch: the changes since the last revision seen were compacted; reading the \
             prefix again"
        );
        self.stream = None;
        self.next_revision = None;
    }

    fn canceled(&self, reason: &str) -> EtcdError {
        self.watch_error(format!("etcd canceled the watch ({reason:?})"))
    }

    fn watch_error(&self, why: String) -> EtcdError {
        let inner = &self.catalog.inner;
        EtcdError {
            kind: EtcdErrorKind::Request,
            message: format!(
                "{}: watching prefix {:?} failed: {why}",
                inner.etcd.at(),
                inner.prefix
            ),
            source: None,
        }
    }

    /// After a failure: logs it, then waits the retry delay (for ever if the policy gives
    /// up). The replicas known stay.
    async fn wait_after(&mut self, error: &EtcdError) {
        let prefix = self.prefix().to_owned();
        match self.backoff.failed(&prefix) {
            Some(delay) => {
                tracing::warn!(
                    prefix = %prefix,
                    %error,
                    failures = self.backoff.failures(),
                    known = self.known.len(),
                    retry_in = ?delay,
                    "etcd watch: failed; keeping the replicas known until it is back"
                );
                tokio::time::sleep(delay).await;
            }
            None => {
                tracing::error!(
                    prefix = %prefix,
                    %error,
                    failures = self.backoff.failures(),
                    known = self.known.len(),
                    "etcd watch: failed, and its retry policy gives up; keeping the replicas \
                     known, and following etcd no more"
                );
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Applies a put of `value` (or a delete, for `None`) to `key` in `known`: the change to send,
/// if any.
fn apply(
    known: &mut BTreeMap<String, String>,
    key: String,
    value: Option<&[u8]>,
) -> Option<Change<String, String>> {
    match value.and_then(|value| address_of(&key, value)) {
        Some(address) => {
            if known.get(&key) == Some(&address) {
                return None;
            }
            known.insert(key.clone(), address.clone());
            Some(Change::Insert(key, address))
        }
        // Deleted, or no longer an address.
        None => known.remove(&key).map(|_| Change::Remove(key)),
    }
}

// === register ===

/// Publishes `address` (`host:port`, as the clients will dial it) under `prefix` in the etcd
/// cluster at `endpoints`, for as long as the returned [`Registration`] lives.
///
/// Grants a lease of `ttl` (whole seconds, rounded up; etcd may raise a short one to its
/// minimum, about 2 s with default settings), puts the key `<prefix><address>-<lease id>`
/// with `address` as its value under the lease, and spawns a task that keeps the lease alive
/// (every third of the TTL). If the lease is lost (etcd answers that it expired, the
/// keep-alive stream ends, or no keep-alive was answered for longer than the TTL), the task
/// registers again, with a new lease and the same key, trying every 100 ms to 1 s until etcd
/// answers.
///
/// If the process dies, the keep-alive stops and etcd deletes the key when the lease lapses,
/// after `ttl`. [`Registration::deregister`], or dropping the registration, deletes it at
/// once.
///
/// # Errors
///
/// [`EtcdErrorKind::InvalidInput`] for an endpoint that is not `host:port` or
/// `http://host:port`, an empty prefix, an address that is not `host:port`, or a `ttl` under
/// 1 s or over an hour; otherwise the error of the lease grant or of the put (etcd
/// unreachable, or no answer within 5 s).
///
/// # Panics
///
/// Outside a Tokio runtime.
pub async fn register<I>(
    endpoints: I,
    prefix: impl Into<String>,
    address: impl fmt::Display,
    ttl: Duration,
) -> Result<Registration, EtcdError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let etcd = Etcd::new(endpoints)?;
    let prefix = check_prefix(prefix.into())?;
    let address = address.to_string();
    if let Err(why) = parse_host_port(&address) {
        return Err(EtcdError::invalid(format!(
            "etcd registration: address {address:?} is not host:port ({why})"
        )));
    }
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(EtcdError::invalid(format!(
            "etcd registration: lease TTL {ttl:?} is out of bounds (from {MIN_TTL:?} to \
             {MAX_TTL:?})"
        )));
    }
    let ttl_secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
        .expect("bounded by MAX_TTL");
    let client = etcd.client().await?;
    let mut lessor = Lessor {
        etcd,
        client,
        key: String::new(),
        address,
        ttl_secs,
    };
    let (lease, granted) = lessor.grant().await?;
    lessor.key = format!("{prefix}{}-{lease:x}", lessor.address);
    if let Err(error) = lessor.put(lease).await {
        lessor.revoke(lease).await.ok();
        return Err(error);
    }
    tracing::info!(
        key = %lessor.key,
        lease,
        ttl = ?granted,
        "etcd: registered"
    );
    let current = Arc::new(AtomicI64::new(lease));
    let lessor = Arc::new(lessor);
    let task = tokio::spawn(keep_registered(
        lessor.clone(),
        current.clone(),
        lease,
        granted,
    ));
    Ok(Registration {
        lessor,
        lease: current,
        ttl: granted,
        task: Some(task),
    })
}

/// The requests of one registration.
struct Lessor {
    etcd: Etcd,
    client: Client,
    key: String,
    address: String,
    ttl_secs: i64,
}

impl Lessor {
    /// A new lease; its id and the TTL etcd granted.
    async fn grant(&self) -> Result<(i64, Duration), EtcdError> {
        let mut client = self.client.clone();
        let response = self
            .etcd
            .request(
                || format!("granting a lease of {}s", self.ttl_secs),
                client.lease_grant(self.ttl_secs, None),
            )
            .await?;
        let granted = Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0));
        // Within what `register` accepts, whatever etcd answers: a huge grant must not
        // overflow the keep-alive's clock.
        Ok((response.id(), granted.clamp(MIN_TTL, MAX_TTL)))
    }

    async fn put(&self, lease: i64) -> Result<(), EtcdError> {
        let mut client = self.client.clone();
        let options = PutOptions::new().with_lease(lease);
        self.etcd
            .request(
                || format!("putting {:?} under lease {lease:x}", self.key),
                client.put(self.key.as_str(), self.address.as_str(), Some(options)),
            )
            .await?;
        Ok(())
    }

    async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let mut client = self.client.clone();
        self.etcd
            .request(
                || format!("revoking lease {lease:x} of {:?}", self.key),
                client.lease_revoke(lease),
            )
            .await?;
        Ok(())
    }

    async fn delete(&self) -> Result<(), EtcdError> {
        let mut client = self.client.clone();
        self.etcd
            .request(
                || format!("deleting {:?}", self.key),
                client.delete(self.key.as_str(), None),
            )
            .await?;
        Ok(())
    }

    /// Revokes the lease (which deletes the key), then deletes the key (in case it is under
    /// an older lease that etcd restored); the first error.
    async fn withdraw(&self, lease: i64) -> Result<(), EtcdError> {
        let revoked = self.revoke(lease).await;
        let deleted = self.delete().await;
        revoked.and(deleted)
    }
}

/// The keep-alive task: keeps `lease` alive; when it is lost, registers again.
async fn keep_registered(lessor: Arc<Lessor>, current: Arc<AtomicI64>, lease: i64, ttl: Duration) {
    let (mut lease, mut ttl) = (lease, ttl);
    loop {
        let why = keep_alive(&lessor, lease, ttl).await;
        tracing::warn!(
            key = %lessor.key,
            lease,
            "etcd: registration lost ({why}); registering again"
        );
        let mut delay = REREGISTER_DELAY_MIN;
        let (new_lease, granted) = loop {
            match lessor.grant().await {
                Ok((new_lease, granted)) => {
                    current.store(new_lease, Ordering::Release);
                    match lessor.put(new_lease).await {
                        Ok(()) => break (new_lease, granted),
                        Err(error) => tracing::warn!(%error, "etcd: registering again failed"),
                    }
                }
                Err(error) => tracing::warn!(%error, "etcd: registering again failed"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(REREGISTER_DELAY_MAX);
        };
        // The old lease holds no key now; etcd may have restored it (after a restart), so
        // revoke it rather than let it run out. Best effort.
        if let Err(error) = lessor.revoke(lease).await {
            tracing::debug!(%error, "etcd: revoking the lost lease failed");
        }
        tracing::info!(
            key = %lessor.key,
            lease = new_lease,
            "etcd: registered again"
        );
        (lease, ttl) = (new_lease, granted);
    }
}

/// Keeps `lease` alive (a keep-alive every third of `ttl`) until it is lost; returns why.
async fn keep_alive(lessor: &Lessor, lease: i64, ttl: Duration) -> String {
    let every = ttl / 3;
    let mut alive_until = Instant::now() + ttl;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if Instant::now() >= alive_until {
            return format!("no keep-alive answered for {ttl:?}, the lease's TTL");
        }
        // One round: at most until the next one is due.
        let round = keep_alive_once(lessor, lease, ttl, &mut stream);
        let round = tokio::time::timeout(every, round).await;
        match round {
            Ok(Ok(Some(answered))) => alive_until = Instant::now() + answered,
            Ok(Ok(None)) => return "etcd says the lease has expired".to_owned(),
            Ok(Err(KeepAliveError::StreamEnded)) => {
                return "etcd ended the keep-alive stream".to_owned();
            }
            Ok(Err(KeepAliveError::Etcd(error))) => {
                tracing::debug!(
                    key = %lessor.key,
                    error = %describe(&error),
                    "etcd: a lease keep-alive failed"
                );
                stream = None;
            }
            Err(_) => {
                tracing::debug!(key = %lessor.key, "etcd: a lease keep-alive got no answer");
                stream = None;
            }
        }
    }
}

enum KeepAliveError {
    StreamEnded,
    Etcd(etcd_client::Error),
}

/// One keep-alive, on the open stream or a new one: the TTL etcd answered, `None` if etcd
/// says the lease is gone.
async fn keep_alive_once(
    lessor: &Lessor,
    lease: i64,
    ttl: Duration,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<Option<Duration>, KeepAliveError> {
    let Some((keeper, responses)) = stream else {
        // Opening the stream sends the first keep-alive and reads its answer.
        let mut client = lessor.client.clone();
        return match client.lease_keep_alive(lease).await {
            Ok(opened) => {
                *stream = Some(opened);
                // Renewed: etcd-client keeps the answer's TTL to itself.
                Ok(Some(ttl))
            }
            // etcd-client's word for a keep-alive answered with TTL 0.
            Err(etcd_client::Error::LeaseKeepAliveError(message))
                if message.contains("not found") =>
            {
                Ok(None)
            }
            Err(error) => Err(KeepAliveError::Etcd(error)),
        };
    };
    keeper.keep_alive().await.map_err(KeepAliveError::Etcd)?;
    match responses.message().await {
        Ok(Some(answer)) if answer.ttl() > 0 => Ok(Some(
            Duration::from_secs(u64::try_from(answer.ttl()).unwrap_or(0)).min(MAX_TTL),
        )),
        Ok(Some(_)) => Ok(None),
        Ok(None) => Err(KeepAliveError::StreamEnded),
        Err(error) => Err(KeepAliveError::Etcd(error)),
    }
}

/// A server's address published in etcd by [`register`], kept alive by a task until
/// [`deregister`](Self::deregister) or drop.
///
/// Dropping it stops the task and revokes the lease in a spawned task (best effort, when
/// dropped inside a Tokio runtime; otherwise the key lapses with the lease, after its TTL).
pub struct Registration {
    lessor: Arc<Lessor>,
    lease: Arc<AtomicI64>,
    ttl: Duration,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.lessor.key)
            .field("address", &self.lessor.address)
            .field("lease_id", &self.lease_id())
            .field("ttl", &self.ttl)
            .field("endpoints", &self.lessor.etcd.endpoints)
            .finish()
    }
}

impl Registration {
    /// The key: `<prefix><address>-<first lease id in hex>`. It stays the same when the task
    /// registers again.
    pub fn key(&self) -> &str {
        &self.lessor.key
    }

    /// The address published.
    pub fn address(&self) -> &str {
        &self.lessor.address
    }

    /// The id of the current lease: it changes each time the task registers again after a
    /// lost lease.
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Acquire)
    }

    /// The lease's TTL, as etcd granted it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Stops the keep-alive task (at once, when called) and revokes the lease, which deletes
    /// the key; the future resolves once etcd has done so.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached or does not answer within 5 s: the key then lapses with the
    /// lease, after its TTL.
    pub fn deregister(mut self) -> impl Future<Output = Result<(), EtcdError>> + Send + 'static {
        let task = self.task.take();
        if let Some(task) = &task {
            task.abort();
        }
        let lessor = self.lessor.clone();
        let lease = self.lease.clone();
        async move {
            if let Some(task) = task {
                // Aborted: ends at its next await, with nothing of it left running.
                let _ = task.await;
            }
            lessor.withdraw(lease.load(Ordering::Acquire)).await
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return; // deregistered
        };
        task.abort();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lessor = self.lessor.clone();
        let lease = self.lease_id();
        runtime.spawn(async move {
            let _ = task.await;
            if let Err(error) = lessor.withdraw(lease).await {
                tracing::warn!(%error, "etcd: deregistering a dropped registration failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_types_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Catalog>();
        send_sync::<Registration>();
        send_sync::<EtcdError>();
        fn send_future<F: Future + Send + 'static>(_: F) {}
        let _ = |catalog: Catalog| send_future(async move { catalog.replicas().await });
    }

    fn replicas(keys: &[&str]) -> Vec<(String, String)> {
        keys.iter()
            .map(|key| ((*key).to_owned(), format!("{key}:80")))
            .collect()
    }

    #[test]
    fn the_next_replica_is_the_one_after_the_last_in_key_order() {
        let list = replicas(&["a", "b", "c"]);
        let next = |last| next_in_turn(&list, last).map(|(key, _)| key.as_str());
        assert_eq!(next(None), Some("a"));
        assert_eq!(next(Some("a")), Some("b"));
        assert_eq!(next(Some("b")), Some("c"));
        assert_eq!(next(Some("c")), Some("a"), "wraps around");
        // The last one has left the list: the one after its place.
        assert_eq!(next(Some("bb")), Some("c"));
        assert_eq!(next(Some("z")), Some("a"));
        assert_eq!(next_in_turn(&[], Some("a")), None);
        let one = replicas(&["a"]);
        assert_eq!(
            next_in_turn(&one, Some("a")).map(|r| r.0.as_str()),
            Some("a")
        );
    }

    /// A put of an address is an insert unless it repeats the one known; a put of something
    /// else, or a delete, removes a known replica and is nothing for an unknown key.
    #[test]
    fn watch_events_become_changes_against_the_known_replicas() {
        let mut known = BTreeMap::new();
        let mut changes = Vec::new();
        let mut put = |key: &str, value: Option<&str>| {
            let change = apply(&mut known, key.to_owned(), value.map(str::as_bytes));
            changes.push(match change {
                Some(Change::Insert(key, address)) => format!("+{key}={address}"),
                Some(Change::Remove(key)) => format!("-{key}"),
                None => "nothing".to_owned(),
            });
        };
        put("a", Some("10.0.0.1:80"));
        put("a", Some(" 10.0.0.1:80\n"));
        put("a", Some("10.0.0.2:80"));
        put("b", Some("not an address"));
        put("b", None);
        put("a", Some("10.0.0.2"));
        put("a", None);
        put("c", Some("[::1]:443"));
        assert_eq!(
            changes,
            [
                "+a=10.0.0.1:80",
                "nothing",
                "+a=10.0.0.2:80",
                "nothing",
                "nothing",
                "-a",
                "nothing",
                "+c=[::1]:443"
            ]
        );
        assert_eq!(
            known,
            BTreeMap::from([("c".to_owned(), "[::1]:443".to_owned())])
        );
    }

    #[test]
    fn host_port_values_are_told_from_the_others() {
        for good in [
            "127.0.0.1:8080",
            "localhost:1",
            "billing-1.internal:65535",
            "[::1]:443",
        ] {
            assert_eq!(parse_host_port(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            ":80",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:+80",
            "127.0.0.1:http",
            "::1:80",
            "[::1]",
            "[nonsense]:80",
            "not an address",
            "http://host:80",
            "host:80/path",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?} taken for host:port");
        }
    }

    #[test]
    fn endpoints_are_host_port_or_http_urls() {
        for good in [
            "127.0.0.1:2379",
            "http://127.0.0.1:2379",
            "http://etcd-0:2379/",
        ] {
            assert!(check_endpoint(good).is_ok(), "{good}");
        }
        for bad in ["127.0.0.1", "https://127.0.0.1:2379", "grpc://x:1", "a b:1"] {
            let error = check_endpoint(bad).unwrap_err();
            assert_eq!(error.kind(), EtcdErrorKind::InvalidInput);
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
