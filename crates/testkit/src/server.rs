//! A server running in-process: the step's own `run` function on a port-0 loopback listener,
//! with a shutdown trigger the test controls.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::failure::{self, SHUTDOWN_TIMEOUT};

/// The shutdown trigger handed to a step's `run`: completes when the test asks the server to
/// shut down, or when the [`Server`] handle is dropped.
#[derive(Debug)]
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender counts as "shut down" too: a test that forgets its server stops it.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A running in-process server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    trigger: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

/// A listener on a free loopback port, and its address: for a server under test, or for a
/// test that plays the server itself.
pub async fn loopback_listener() -> (TcpListener, SocketAddr) {
    failure::short_panics();
    // Binding port 0 on loopback only fails if the machine has no loopback interface at all.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0");
    let addr = listener
        .local_addr()
        .expect("reading the address of a bound listener");
    (listener, addr)
}

/// Both ends of one loopback TCP connection: `(client, server)`.
pub async fn connected_pair() -> (TcpStream, TcpStream) {
    let (listener, addr) = loopback_listener().await;
    let client = TcpStream::connect(addr)
        .await
        .expect("connecting on loopback");
    let (server, _) = listener.accept().await.expect("accepting on loopback");
    (client, server)
}

/// Binds `127.0.0.1:0` and spawns `run(listener, shutdown)`, the entry point every step's
/// library exports.
pub async fn start<F, Fut, E>(run: F) -> Server
where
    F: FnOnce(TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    let (listener, addr) = loopback_listener().await;
    let (trigger, rx) = oneshot::channel();
    let served = run(listener, Shutdown(rx));
    let task = tokio::spawn(async move { served.await.map_err(|e| e.to_string()) });
    Server {
        addr,
        trigger: Some(trigger),
        task,
    }
}

impl Server {
    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the server to shut down, without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        if let Some(trigger) = self.trigger.take() {
            // The server may already have stopped listening for it; that is not our concern.
            let _ = trigger.send(());
        }
    }

    /// Asks the server to shut down and waits until its `run` returns `Ok`.
    pub async fn shutdown(mut self) {
        self.trigger_shutdown();
        self.finished().await;
    }

    /// Waits until the server's `run` returns, and fails the test unless it returned `Ok`
    /// within the shutdown deadline.
    pub async fn finished(self) {
        let finished = failure::shutdown_within("the server's `run`", SHUTDOWN_TIMEOUT, self.task);
        match finished.await {
            Err(hung) => panic!("{hung}"),
            Ok(Err(join)) => panic!("the server task panicked: {join}"),
            Ok(Ok(Err(e))) => panic!("the server returned an error: {e}"),
            Ok(Ok(Ok(()))) => {}
        }
    }

    /// Whether `run` has returned (for tests that check it keeps running).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
