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
    Client, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
};
use futures_util::future::BoxFuture;
use tokio::{sync::OnceCell, task::JoinHandle, time::Instant};

use super::AddressSource;

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
        Ok(Self::from_parts(etcd, prefix))
    }

    fn from_parts(etcd: Etcd, prefix: String) -> Self {
        Self {
            inner: Arc::new(CatalogInner {
                etcd,
                prefix,
                client: OnceCell::new(),
                last: Mutex::new(None),
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
        Self::from_parts(etcd, self.inner.prefix.clone())
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

    /// Reads the prefix: the usable replicas in key order, and how many values were skipped.
    async fn read(&self) -> Result<(Vec<(String, String)>, usize), EtcdError> {
        let inner = &self.inner;
        let etcd = &inner.etcd;
        let what = || format!("reading prefix {:?}", inner.prefix);
        let mut client = inner
            .client
            .get_or_try_init(|| etcd.client())
            .await?
            .clone();
        // Serializable: the member answers from its own copy, without a round of consensus.
        // A lookup then works while the cluster has lost its quorum (the replicas may well be
        // up), and costs the cluster less; the price is a list that may lag by moments, which
        // at worst offers a replica that just left: one failed attempt, and the next lookup
        // gives the next replica.
        let options = GetOptions::new().with_prefix().with_serializable();
        let response = etcd
            .request(what, client.get(inner.prefix.as_str(), Some(options)))
            .await?;
        let mut replicas = Vec::new();
        let mut skipped = 0;
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            match parse_host_port(value.trim()) {
                Ok(()) => replicas.push((key, value.trim().to_owned())),
                Err(why) => {
                    skipped += 1;
                    tracing::warn!(
                        key = %key,
                        value = %value,
                        "etcd catalog: skipping a value that is not host:port ({why})"
                    );
                }
            }
        }
        replicas.sort();
        Ok((replicas, skipped))
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
        Ok((response.id(), granted.max(MIN_TTL)))
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
        Ok(Some(answer)) if answer.ttl() > 0 => Ok(Some(Duration::from_secs(
            u64::try_from(answer.ttl()).unwrap_or(0),
        ))),
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
