//! Watching a connection: hooks called with each event and state change ([`OnEvent`]), any
//! number of event subscribers ([`EventBus`]), and the counters of a layer's life
//! ([`Stats`], from [`Handle::stats`](crate::Handle::stats)).

pub use crate::{
    bus::{EventBus, Subscription, Update},
    event::OnEvent,
    stats::Stats,
};
