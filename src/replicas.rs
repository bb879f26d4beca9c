//! Replicas: one persistent connection per replica a catalog lists, as a
//! [`tower::discover::Discover`] for tower's balancer, and a ready-made balanced client.
//!
//! [`Replicas`] follows a catalog's [`Changes`]: for each replica listed it makes a persistent
//! connection with the layer's settings (retry policy, hooks, health check, close signal;
//! the replica's key in its server name, so in every log line), which starts connecting at
//! once. A replica removed from the catalog leaves the balancer, and its connection closes
//! once the requests in flight on it have finished. A replica that is down but still listed
//! is `Pending`: the balancer routes around it and never evicts it, and its driver keeps
//! trying with the retry policy. A catalog that cannot be reached keeps its last known set
//! (the catalogs' watches re-establish themselves).
//!
//! [`Replicas::balanced`] builds the usual stack in one expression: each replica measured by
//! its requests in flight ([`PendingRequests`]), tower's power-of-two-choices
//! [`Balance`] over them, and a cloneable [`Buffer`] in front: a [`BalancedClient`]. It is the
//! drop-in for tonic's `Channel::balance_channel`, and a tonic client runs over it as over a
//! `Channel`. Put a [`FailFastLayer`](crate::failfast::FailFastLayer) under a buffer of its
//! own above it to fail fast when every replica is down.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer, discovery::LocalCatalog, replicas::Replicas,
//! };
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // The catalog: in-process here; `discovery::dns` and `discovery::etcd` watch real ones.
//! let catalog = LocalCatalog::new();
//! catalog.insert("billing-1", "replica one");
//! catalog.insert("billing-2", "replica two");
//!
//! // The maker: each connection answers with the address it was made for.
//! let maker = service_fn(|address: &'static str| async move {
//!     Ok::<_, BoxError>(service_fn(move |request: String| async move {
//!         Ok::<_, BoxError>(format!("{address} got {request}"))
//!     }))
//! });
//!
//! let layer = PersistentConnectionLayer::new(catalog.clone())
//!     .server_name("billing")
//!     .retry_delay(|| Duration::from_millis(500));
//! let client = Replicas::new(catalog.watch(), layer, maker).balanced(64);
//!
//! let reply = client.clone().oneshot("hello".to_string()).await?;
//! assert!(reply.ends_with("got hello"));
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures_util::{Stream, StreamExt};
use tower::{
    balance::p2c::Balance,
    buffer::Buffer,
    discover::Change,
    load::{CompleteOnResponse, PendingRequestsDiscover},
};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    BoxError, ConnectError, Handle, PersistentConnection, PersistentConnectionLayer, State,
    discovery::Changes, failfast::Diagnose,
};

/// One persistent connection per replica of a catalog: a [`Discover`](tower::discover::Discover)
/// of [`PersistentConnection`]s keyed by the catalog's keys. See the [module](self).
pub struct Replicas<K, S> {
    changes: Pin<Box<dyn Stream<Item = Change<K, PersistentConnection<S>>> + Send>>,
    set: ReplicaSet<K, S>,
    name: Arc<str>,
}

impl<K, S> Replicas<K, S>
where
    K: Ord + std::hash::Hash + Clone + fmt::Display + Send + Sync + 'static,
    S: Clone + Send + 'static,
{
    /// Follows `changes` (a catalog's [`Changes`]), making each replica's persistent
    /// connection from `maker` with the settings of `layer`; its address source is not used,
    /// as each replica connects to its own address.
    ///
    /// # Panics
    ///
    /// If polled outside a Tokio runtime: each replica's driver is a Tokio task.
    pub fn new<A, E, C, H, M>(
        changes: Changes<K, A>,
        layer: PersistentConnectionLayer<A, E, C, H>,
        maker: M,
    ) -> Self
    where
        A: Clone + Send + Sync + 'static,
        M: Clone + Send + 'static,
        PersistentConnectionLayer<A, E, C, H>: Layer<M, Service = PersistentConnection<S>>,
        E: Send + Sync + 'static,
        C: Send + Sync + 'static,
        H: Send + Sync + 'static,
    {
        let set = ReplicaSet {
            handles: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let name = layer.explicit_name().unwrap_or("replicas").into();
        let handles = set.clone();
        let changes = changes.map(move |change| match change {
            Change::Insert(key, address) => {
                let connection = layer.for_replica(address, &key).layer(maker.clone());
                tracing::debug!(replica = %key, "replica listed: connecting");
                handles.insert(key.clone(), connection.handle());
                Change::Insert(key, connection)
            }
            Change::Remove(key) => {
                tracing::debug!(replica = %key, "replica no longer listed: leaving the balancer");
                handles.remove(&key);
                Change::Remove(key)
            }
        });
        Self {
            changes: Box::pin(changes),
            set,
            name,
        }
    }

    /// The replicas known now, with a handle to each one's connection.
    pub fn set(&self) -> ReplicaSet<K, S> {
        self.set.clone()
    }

    /// The usual balanced client over these replicas: each measured by its requests in flight,
    /// tower's p2c [`Balance`] over them, and a [`Buffer`] of `capacity` requests in front,
    /// which makes it cloneable. See [`BalancedClient`].
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime (the buffer's worker is a Tokio task).
    pub fn balanced<Req>(self, capacity: usize) -> BalancedClient<Req, PersistentResponse<S, Req>>
    where
        Req: Send + 'static,
        PersistentConnection<S>: Service<Req, Error = BoxError>,
        PersistentResponse<S, Req>: Send + 'static,
        <PersistentConnection<S> as Service<Req>>::Future: Send + 'static,
    {
        let set = self.set.clone();
        let name = self.name.clone();
        let balance = Balance::new(PendingRequestsDiscover::new(
            self,
            CompleteOnResponse::default(),
        ));
        let boxed = BoxFutures(balance);
        let set: Arc<dyn Diagnose + Send + Sync> = Arc::new(Diagnosis { set, name });
        BalancedClient {
            buffer: Buffer::new(boxed, capacity),
            diagnosis: set,
        }
    }
}

/// The response type of a persistent connection of `S` to a request of `Req`.
pub type PersistentResponse<S, Req> = <PersistentConnection<S> as Service<Req>>::Response;

impl<K, S> Stream for Replicas<K, S> {
    type Item = Result<Change<K, PersistentConnection<S>>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes
            .as_mut()
            .poll_next(cx)
            .map(|change| change.map(Ok))
    }
}

impl<K: fmt::Debug + Clone + Ord, S> fmt::Debug for Replicas<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicas")
            .field("name", &self.name)
            .field("replicas", &self.set.keys())
            .finish_non_exhaustive()
    }
}

/// The replicas a [`Replicas`] knows now: a cloneable view with a [`Handle`] to each one's
/// persistent connection (to observe it, or reconnect it now).
pub struct ReplicaSet<K, S> {
    handles: Arc<Mutex<BTreeMap<K, Handle<S>>>>,
}

impl<K: Ord + Clone, S> ReplicaSet<K, S> {
    fn insert(&self, key: K, handle: Handle<S>) {
        self.lock().insert(key, handle);
    }

    fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<K, Handle<S>>> {
        // A panic elsewhere while holding the lock left a consistent map: go on with it.
        self.handles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The keys of the replicas known now, in order.
    pub fn keys(&self) -> Vec<K> {
        self.lock().keys().cloned().collect()
    }

    /// The handle of the replica under `key`, if it is known.
    pub fn handle(&self, key: &K) -> Option<Handle<S>> {
        self.lock().get(key).cloned()
    }
}

impl<K: Ord + Clone, S: Clone + Send + 'static> ReplicaSet<K, S> {
    /// Each replica's key and state.
    pub fn states(&self) -> Vec<(K, State)> {
        self.lock()
            .iter()
            .map(|(key, handle)| (key.clone(), handle.state()))
            .collect()
    }

    /// The error of the latest failed attempt among the replicas not connected now.
    fn last_connect_error(&self) -> Option<ConnectError> {
        self.lock()
            .values()
            .filter(|handle| handle.current_connection().is_none())
            .filter_map(|handle| handle.stats().last_error)
            .next()
    }
}

impl<K, S> Clone for ReplicaSet<K, S> {
    fn clone(&self) -> Self {
        Self {
            handles: self.handles.clone(),
        }
    }
}

impl<K: fmt::Debug + Ord + Clone, S> fmt::Debug for ReplicaSet<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReplicaSet").field(&self.keys()).finish()
    }
}

struct Diagnosis<K, S> {
    set: ReplicaSet<K, S>,
    name: Arc<str>,
}

impl<K, S> Diagnose for Diagnosis<K, S>
where
    K: Ord + Clone + Send + Sync,
    S: Clone + Send + 'static,
{
    fn server_name(&self) -> Arc<str> {
        self.name.clone()
    }

    fn last_connect_error(&self) -> Option<ConnectError> {
        self.set.last_connect_error()
    }
}

/// A boxed response future.
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Boxes a service's response futures, so [`BalancedClient`]'s type names only the request and
/// response types.
struct BoxFutures<T>(T);

impl<T, Req> Service<Req> for BoxFutures<T>
where
    T: Service<Req, Error = BoxError>,
    T::Future: Send + 'static,
{
    type Response = T::Response;
    type Error = BoxError;
    type Future = BoxFuture<T::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        Box::pin(self.0.call(request))
    }
}

/// A balanced client over the replicas of a catalog, made by [`Replicas::balanced`]: cloneable
/// (clones share the balancer), a `Service<Req>` whose requests go to the least loaded of two
/// ready replicas picked at random, waiting while none is ready.
///
/// Under a [`FailFastLayer`](crate::failfast::FailFastLayer) it names the catalog and the last
/// connect error of a replica that is down.
pub struct BalancedClient<Req, Resp> {
    buffer: Buffer<Req, BoxFuture<Resp>>,
    diagnosis: Arc<dyn Diagnose + Send + Sync>,
}

impl<Req: Send + 'static, Resp: 'static> Clone for BalancedClient<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            buffer: self.buffer.clone(),
            diagnosis: self.diagnosis.clone(),
        }
    }
}

impl<Req, Resp> fmt::Debug for BalancedClient<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedClient")
            .field("name", &self.diagnosis.server_name())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Service<Req> for BalancedClient<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = <Buffer<Req, BoxFuture<Resp>> as Service<Req>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.buffer.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.buffer.call(request)
    }
}

impl<Req, Resp> Diagnose for BalancedClient<Req, Resp> {
    fn server_name(&self) -> Arc<str> {
        self.diagnosis.server_name()
    }

    fn last_connect_error(&self) -> Option<ConnectError> {
        self.diagnosis.last_connect_error()
    }
}
