//! Deciding *when* to shut down. Signals are one trigger among several (an admin command, a
//! fatal error, a test), so every trigger feeds one channel and `main` waits in one place for
//! the first reason to stop.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// Why the process is shutting down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
    /// SIGTERM: what `kill`, systemd, Docker and Kubernetes send.
    Terminate,
    /// Some part of the program asked: an admin command, a fatal error, a test.
    Requested(String),
}

// ANCHOR: signals
/// The two signals that mean "please stop".
#[derive(Debug)]
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Installs both handlers before returning. From then on SIGINT and SIGTERM no longer kill
    /// the process: they wait here for `recv`. Say "ready" only after this has returned.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> Reason {
        // `Signal::recv` is cancel safe: the branch that loses drops no signal. It returns
        // `None` only once the runtime is shutting down, which is a reason to stop as well.
        tokio::select! {
            _ = self.interrupt.recv() => Reason::Interrupt,
            _ = self.terminate.recv() => Reason::Terminate,
        }
    }
}
// ANCHOR_END: signals

// ANCHOR: trigger
/// Asks for a shutdown. Cheap to clone: hand one to every part of the program that may need
/// to stop it.
#[derive(Debug, Clone)]
pub struct Trigger(mpsc::Sender<Reason>);

impl Trigger {
    /// Asks for a shutdown, without ever waiting. If the channel's one slot is taken, a reason
    /// is already on its way; if the receiver is gone, the decision is made. Either way this
    /// request has nothing left to do, so its result is ignored on purpose.
    pub fn request(&self, reason: Reason) {
        let _ = self.0.try_send(reason);
    }
}

/// Installs the signal handlers and funnels them, and every [`Trigger`], into one receiver.
/// The first reason that arrives is the decision.
pub fn shutdown_requests() -> io::Result<(Trigger, mpsc::Receiver<Reason>)> {
    // One slot is enough: only the first reason matters.
    let (tx, rx) = mpsc::channel(1);
    let trigger = Trigger(tx);
    let mut signals = Signals::install()?;
    let signal_trigger = trigger.clone();
    tokio::spawn(async move { signal_trigger.request(signals.recv().await) });
    Ok((trigger, rx))
}
// ANCHOR_END: trigger
