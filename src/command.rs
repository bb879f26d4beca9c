//! [`Command`]: what service clones and handles tell the driver, over its inbox.

use crate::{BoxError, shared::Word};

/// What service clones and handles tell the driver.
pub(crate) enum Command {
    /// A clone's `poll_ready` on the connection published as `word` failed.
    Failed { word: Word, error: BoxError },
    /// Stop now (the shared state is already closed by the sender).
    Close,
    /// Stop once the current connection ends; stop now if there is none.
    CloseAfterCurrent,
    /// Skip the rest of the current retry delay (or the next one, if an attempt is running).
    ReconnectNow,
}
