//! Where addresses come from: the `get_address` function, called before every attempt.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::BoxError;

pub(crate) type AddressFuture<A> = Pin<Box<dyn Future<Output = Result<A, BoxError>> + Send>>;

/// The boxed address source a layer and its drivers share.
pub(crate) type GetAddress<A> = Arc<dyn Fn() -> AddressFuture<A> + Send + Sync>;

/// Boxes a user's `get_address` closure.
pub(crate) fn boxed<A, G, F, E>(get_address: G) -> GetAddress<A>
where
    G: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = Result<A, E>> + Send + 'static,
    E: Into<BoxError>,
{
    Arc::new(move || {
        let future = get_address();
        Box::pin(async move { future.await.map_err(Into::into) })
    })
}

/// An address source that cycles through `addresses`, one per attempt.
pub(crate) fn round_robin<A>(addresses: Vec<A>) -> GetAddress<A>
where
    A: Clone + Send + Sync + 'static,
{
    assert!(
        !addresses.is_empty(),
        "PersistentConnectionLayer::round_robin needs at least one address"
    );
    let next = AtomicUsize::new(0);
    Arc::new(move || {
        let index = next.fetch_add(1, Ordering::Relaxed) % addresses.len();
        let address = addresses[index].clone();
        Box::pin(async move { Ok(address) })
    })
}
