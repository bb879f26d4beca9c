//! The driver's [`Inbox`]: the command channel from service clones and handles, and what it
//! remembers between commands (`reconnect_now`).

use std::future::Future;

use tokio::{
    sync::mpsc::UnboundedReceiver,
    time::{Instant, sleep_until},
};

use super::Stop;
use crate::command::Command;

/// The driver's command channel, and what it remembers between commands.
pub(crate) struct Inbox {
    pub(crate) commands: UnboundedReceiver<Command>,
    /// `reconnect_now` arrived while an attempt was running: skip the next wait.
    pub(crate) reconnect_now: bool,
    /// `reconnect_now` arrived: reset the retry policy before the next attempt.
    pub(crate) reset_policy: bool,
}

impl Inbox {
    pub(crate) fn new(commands: UnboundedReceiver<Command>) -> Self {
        Self {
            commands,
            reconnect_now: false,
            reset_policy: false,
        }
    }

    /// Runs `future` (an attempt's step) to completion unless a command stops the driver
    /// first; dropping the future cancels the attempt at once. Failure reports are stale here
    /// (nothing is connected), and `reconnect_now` is remembered for the wait that follows.
    pub(super) async fn race<F: Future>(&mut self, future: F) -> Result<F::Output, Stop> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => if unconnected(command)? {
                    self.reconnect_now = true;
                    self.reset_policy = true;
                },
                output = &mut future => return Ok(output),
            }
        }
    }

    /// Sleeps until `at`, unless `reconnect_now` arrives first (or arrived during the attempt
    /// before) or a command stops the driver.
    pub(super) async fn sleep_until(&mut self, at: Instant) -> Result<(), Stop> {
        if std::mem::take(&mut self.reconnect_now) {
            return Ok(());
        }
        let sleep = sleep_until(at);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => if unconnected(command)? {
                    self.reset_policy = true;
                    return Ok(());
                },
                () = &mut sleep => return Ok(()),
            }
        }
    }
}

/// What a command means while not connected: stop the driver (`Err`), `reconnect_now`
/// (`Ok(true)`), or nothing (`Ok(false)`: a failure report is stale when nothing is
/// connected). "Close after the current connection" closes now, as there is none.
fn unconnected(command: Option<Command>) -> Result<bool, Stop> {
    match command {
        None => Err(Stop::Abandoned),
        Some(Command::Close | Command::CloseAfterCurrent) => Err(Stop::Closed),
        Some(Command::ReconnectNow) => Ok(true),
        Some(Command::Failed { .. }) => Ok(false),
    }
}
