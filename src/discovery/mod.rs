//! Where addresses come from: an [`AddressSource`], asked before every connection attempt.
//!
//! A layer asks its source for an address before **every** attempt, so a source that looks the
//! server up in a catalog moves the client to another replica when the one in use dies: the
//! next attempt gets the other's address. A failed lookup is a failed attempt (an
//! [`Event::FailedToConnect`] of kind [`ConnectErrorKind::Discovery`]), followed by the
//! normal retry delay; the lookup and the connect share one connect timeout.
//!
//! | Source | Feature | Built with |
//! |---|---|---|
//! | a closure returning a future | none | [`PersistentConnectionLayer::new`]`(|| async { .. })` |
//! | one fixed address | none | [`PersistentConnectionLayer::fixed_address`] |
//! | a fixed list, one per attempt | none | [`PersistentConnectionLayer::round_robin`] |
//! | an in-process catalog | none | [`LocalCatalog`] |
//! | DNS: A/AAAA or SRV records | `dns` | `dns::Resolver::system()?.host("api.example.test", 8080)` |
//! | the replicas registered under a key prefix in etcd | `etcd` | `etcd::Catalog::new` (servers publish themselves with `etcd::register`) |
//!
//! Any type can be a source by implementing [`AddressSource`]; every closure
//! `Fn() -> impl Future<Output = Result<A, E>>` already is one.
//!
//! The catalogs also offer a watch of their replicas, [`Changes`]
//! ([`LocalCatalog::watch`], [`fixed_list`], `dns::Host::watch`, `dns::Srv::watch`,
//! `etcd::Catalog::watch`), which [`Replicas`](crate::replicas::Replicas) turns into one
//! persistent connection per replica under a balancer.
//!
//! [`Event::FailedToConnect`]: crate::Event::FailedToConnect
//! [`ConnectErrorKind::Discovery`]: crate::ConnectErrorKind::Discovery
//! [`PersistentConnectionLayer::new`]: crate::PersistentConnectionLayer::new
//! [`PersistentConnectionLayer::fixed_address`]: crate::PersistentConnectionLayer::fixed_address
//! [`PersistentConnectionLayer::round_robin`]: crate::PersistentConnectionLayer::round_robin

#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub mod dns;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::BoxError;

#[cfg(any(feature = "dns", feature = "etcd"))]
mod backoff;
mod watch;

pub use self::watch::{Changes, EmptyCatalog, LocalCatalog, fixed_list};
#[allow(unused_imports)] // for the catalogs of features dns and etcd
pub(crate) use self::watch::{changes_of, diff};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd;

/// A source of addresses: asked for one before every connection attempt.
///
/// Implemented for every closure `Fn() -> impl Future<Output = Result<A, E>>` (with
/// `E: Into<BoxError>`), and by the crate's catalogs. An error is a failed attempt: the layer
/// reports it as [`ConnectErrorKind::Discovery`](crate::ConnectErrorKind::Discovery) and
/// tries again after the retry delay, so its message should name what was looked up.
///
/// # Example
///
/// A source of its own: a catalog that knows where the server is.
///
/// ```
/// use std::{future::Ready, sync::{Arc, Mutex}};
/// use persistent_connection::{PersistentConnectionLayer, discovery::AddressSource};
///
/// #[derive(Clone, Default)]
/// struct Catalog(Arc<Mutex<Option<String>>>);
///
/// impl AddressSource<String> for Catalog {
///     type Error = &'static str;
///     type Future = Ready<Result<String, Self::Error>>;
///
///     fn get_address(&self) -> Self::Future {
///         let published = self.0.lock().unwrap().clone();
///         std::future::ready(published.ok_or("no replica published under `billing`"))
///     }
/// }
///
/// let catalog = Catalog::default();
/// let layer = PersistentConnectionLayer::new(catalog.clone());
/// # let _ = layer;
/// ```
pub trait AddressSource<A>: Send + Sync + 'static {
    /// The error of a failed lookup.
    type Error: Into<BoxError>;
    /// The lookup.
    type Future: Future<Output = Result<A, Self::Error>> + Send + 'static;

    /// Looks up the address for the next connection attempt.
    fn get_address(&self) -> Self::Future;
}

impl<A, G, F, E> AddressSource<A> for G
where
    G: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = Result<A, E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Error = E;
    type Future = F;

    fn get_address(&self) -> F {
        self()
    }
}

pub(crate) type AddressFuture<A> = Pin<Box<dyn Future<Output = Result<A, BoxError>> + Send>>;

/// The boxed address source a layer and its drivers share.
pub(crate) type GetAddress<A> = Arc<dyn Fn() -> AddressFuture<A> + Send + Sync>;

/// Boxes an address source.
pub(crate) fn boxed<A, G>(source: G) -> GetAddress<A>
where
    G: AddressSource<A>,
{
    Arc::new(move || {
        let future = source.get_address();
        Box::pin(async move { future.await.map_err(Into::into) })
    })
}

/// An address source that cycles through `addresses`, one per attempt. An empty list fails
/// every lookup with [`EmptyList`]: a failed attempt of kind
/// [`Discovery`](crate::ConnectErrorKind::Discovery) whose message says so.
pub(crate) fn round_robin<A>(addresses: Vec<A>) -> GetAddress<A>
where
    A: Clone + Send + Sync + 'static,
{
    let next = AtomicUsize::new(0);
    Arc::new(move || {
        let address = match addresses.len() {
            0 => Err(EmptyList.into()),
            len => Ok(addresses[next.fetch_add(1, Ordering::Relaxed) % len].clone()),
        };
        Box::pin(std::future::ready(address))
    })
}

/// The error of every lookup in an empty round-robin list.
#[derive(Debug)]
struct EmptyList;

impl fmt::Display for EmptyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the address list is empty: PersistentConnectionLayer::round_robin was given no address")
    }
}

impl std::error::Error for EmptyList {}
