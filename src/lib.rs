//! A tower middleware that keeps a client's connection to a server alive.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod close;
mod discover;
mod driver;
mod error;
mod event;
mod handle;
mod layer;
mod retry;
mod service;
mod shared;
mod sync;
#[cfg(test)]
mod tests;

pub use crate::{
    close::{CloseReason, CloseSignal},
    error::{Closed, ConnectError, ConnectErrorKind, InvalidJitter},
    event::{Event, OnEvent},
    handle::{Handle, State},
    layer::PersistentConnectionLayer,
    retry::MAX_RETRY_DELAY,
    service::{PersistentConnection, ResponseFuture},
};

/// The boxed error type of [`PersistentConnection`]'s `Service` impl.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
