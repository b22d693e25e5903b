//! The broker task: it owns the map from names to peers, routes each line's bytes into its
//! recipients' queues, and starts each peer's writer and removes the peer when it ends.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::task::TaskTracker;

use crate::event::{Event, Login, Receiver};
use crate::outbox::{PeerQueue, QueueReceiver, peer_queue, queue_cost};
use crate::protocol::{destinations, split_message};
use crate::tasks::{spawn_and_log_error, until_closed};
use crate::writer::{TooSlow, writer_loop};

// ANCHOR: broker_loop
/// A connected peer, as the broker sees it.
#[derive(Debug)]
struct Peer {
    /// Which connection this is: a writer that ends removes the entry only if it is its own.
    id: u64,
    /// The peer's queue, bounded by its senders' credit.
    queue: PeerQueue,
    /// The number of the last line queued for this peer (see [`deliver`]).
    last_line: u64,
}

// ANCHOR: slow_consumer
/// Queues `from NAME: text` for the peer called `name`, if it is connected and line number
/// `line` is not queued for it yet, without ever waiting, with its share of `credit`.
///
/// As in step 06, the queue never refuses a line for its size: its senders' credit bounds
/// it, and a peer is dropped for time, when its writer makes no progress for the stall
/// timeout.
fn deliver(
    peers: &mut HashMap<String, Peer>,
    name: &str,
    line: u64,
    from: &str,
    text: &str,
    credit: &mut OwnedSemaphorePermit,
) {
    let Some(peer) = peers.get_mut(name) else {
        return;
    };
    // A name written twice in one line: the line is queued for this peer already. (No search
    // through the names before it, as step 06 does: the peer remembers.)
    if peer.last_line == line {
        return;
    }
    peer.last_line = line;
    // The reader paid an upper bound for each name it may reach, so the share is there.
    let Some(share) = credit.split(queue_cost(from, text)) else {
        return;
    };
    if peer.queue.push(from, text, share).is_err() {
        // The writer has ended and its disconnect is on its way; the line is lost with the
        // client, and its credit goes back.
        eprintln!("{name} is gone; a message to it was dropped");
    }
}
// ANCHOR_END: slow_consumer

// ANCHOR: remove_peer
/// Removes a peer whose writer ended, if the entry is still its own: the name may have been
/// freed (the peer was too slow) and taken by a new session since, which must stay. Messages
/// still queued cannot be written any more; the log counts them.
fn remove_peer(peers: &mut HashMap<String, Peer>, name: String, id: u64, pending: QueueReceiver) {
    if let Entry::Occupied(entry) = peers.entry(name.clone()) {
        if entry.get().id == id {
            entry.remove();
        }
    }
    match pending.len() {
        0 => eprintln!("{name} left"),
        n => eprintln!("{name} left; {n} messages to it were not delivered"),
    }
}
// ANCHOR_END: remove_peer

/// Owns the map from names to peers, routes messages, and removes a peer when its writer ends
/// (the client left, or stopped reading for `stall_timeout`).
///
/// One task owns the map, so no lock is needed: every change to it is an event handled here,
/// one at a time. This task never waits for a peer: a slow client must not slow everyone
/// else down. Writers are spawned on `tracker`, so `run` waits for them.
pub(crate) async fn broker_loop(
    mut events: Receiver<Event>,
    tracker: TaskTracker,
    stall_timeout: Duration,
) {
    let mut peers: HashMap<String, Peer> = HashMap::new();
    // Writers send `(name, id, receiver)` here when they end.
    let (disconnect_sender, mut disconnect_receiver) = mpsc::unbounded_channel();
    // The number of the last line routed (see `deliver`).
    let mut line_number: u64 = 0;

    loop {
        let event = tokio::select! {
            // Departures first: when a writer has ended and a new login arrives at the same
            // time, the departed name is free before the login is handled, so a client that
            // reconnects at once gets its name back.
            biased;
            disconnect = disconnect_receiver.recv() => {
                // `None` cannot happen here: we hold `disconnect_sender` until after the loop.
                if let Some((name, id, pending)) = disconnect {
                    remove_peer(&mut peers, name, id, pending);
                }
                continue;
            },
            event = events.recv() => match event {
                Some(event) => event,
                // Every reader and the server are gone: no more events will come.
                None => break,
            },
        };
        match event {
            // ANCHOR: route
            // Each line is split where it lies in the event's `String`; each recipient's
            // queue gets a copy of the bytes its line is made of, appended to what it holds.
            Event::Lines {
                from,
                lines,
                mut credit,
            } => {
                // `lines` drops each `\n` and the `\r` of a CRLF ending before it.
                for line in lines.lines() {
                    match split_message(line) {
                        Some((dest, text)) => {
                            // Each line routed gets a number, so that a peer named twice in it
                            // can tell it already has it.
                            line_number += 1;
                            for name in destinations(dest) {
                                deliver(&mut peers, name, line_number, &from, text, &mut credit);
                            }
                        }
                        None => eprintln!("{from}: ignored a line without ':'"),
                    }
                }
            }
            // What is left of `credit` (the over-estimate, and the shares of names nobody has)
            // is dropped with the event: it goes back to the sender at once.
            // ANCHOR_END: route
            Event::Leave { name, id } => {
                // Dropping the entry drops the queue's sender: the writer writes what the
                // queue holds, then sees it closed. (A newer session of the same name stays.)
                if let Entry::Occupied(entry) = peers.entry(name) {
                    if entry.get().id == id {
                        entry.remove();
                    }
                }
            }
            Event::NewPeer {
                name,
                id,
                stream,
                reader_gone,
                close,
                login,
            } => match peers.entry(name) {
                Entry::Occupied(entry) => {
                    eprintln!("{} is taken; login refused", entry.key());
                    // Fails only if the reader is gone; then nobody needs the answer.
                    let _ = login.send(Login::Taken(stream));
                }
                Entry::Vacant(entry) => {
                    let (queue, mut receiver) = peer_queue();
                    let name = entry.key().clone();
                    entry.insert(Peer {
                        id,
                        queue,
                        // Lines are numbered from 1.
                        last_line: 0,
                    });
                    // If the reader is gone, so is its end of `reader_gone`: the writer we
                    // start sees that and ends at once.
                    let _ = login.send(Login::Accepted);
                    let disconnect_sender = disconnect_sender.clone();
                    spawn_and_log_error(&tracker, async move {
                        let writer = writer_loop(&mut receiver, stream, reader_gone, stall_timeout);
                        let result = match until_closed(close.clone(), writer).await {
                            // The client stopped reading, as in step 06: its reader stops too,
                            // and dropping its queue below returns its senders' credit.
                            Err(e) if e.is::<TooSlow>() => {
                                eprintln!("{name} is too slow: {e}; disconnecting it");
                                close.cancel();
                                Ok(())
                            }
                            result => result,
                        };
                        // Hand the receiver back however the writer ended. This send fails
                        // only once the broker has ended, and then nobody needs the peer
                        // removed.
                        let _ = disconnect_sender.send((name, id, receiver));
                        result
                    });
                }
            },
        }
    }

    // ANCHOR: broker_drain
    // Dropping the map drops every peer's sender: each writer writes what is queued and ends.
    // No need to wait for the writers here: they are on the tracker, and `run` waits for
    // everything on it.
    drop(peers);
    // ANCHOR_END: broker_drain
}
// ANCHOR_END: broker_loop

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;
    use tokio::sync::{Semaphore, oneshot};
    use tokio_util::codec::{FramedRead, LinesCodec};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::event::{ClientWriter, Handover};
    use crate::outbox::batch_cost;

    /// One side of a peer the test logs in by hand: the client's end of its pipe, and what
    /// its reader would hold.
    struct HandPeer {
        client: FramedRead<tokio::io::DuplexStream, LinesCodec>,
        _hand_over: oneshot::Sender<Handover>,
        login: oneshot::Receiver<Login>,
    }

    fn new_peer(name: &str, id: u64, slots: &Arc<Semaphore>) -> (Event, HandPeer) {
        let (client, served) = tokio::io::duplex(64 * 1024);
        let (hand_over, reader_gone) = oneshot::channel();
        let (login, answered) = oneshot::channel();
        let slot = Arc::clone(slots)
            .try_acquire_owned()
            .expect("the test's semaphore has room");
        let event = Event::NewPeer {
            name: name.to_string(),
            id,
            stream: ClientWriter {
                stream: Box::new(served),
                _slot: slot,
            },
            reader_gone,
            close: CancellationToken::new(),
            login,
        };
        let peer = HandPeer {
            client: FramedRead::new(client, LinesCodec::new()),
            _hand_over: hand_over,
            login: answered,
        };
        (event, peer)
    }

    fn to_bob(text: &str) -> Event {
        let lines = format!("bob: {text}\n");
        let (cost, _) = batch_cost("alice", &lines, 1 << 20);
        let credit = Arc::new(Semaphore::new(cost))
            .try_acquire_many_owned(cost as u32)
            .expect("a fresh semaphore has the credit");
        Event::Lines {
            from: Arc::from("alice"),
            lines,
            credit,
        }
    }

    /// The reconnect race: `bob` breaks a rule and leaves, a new `bob` logs in, and only then
    /// does the old `bob`'s writer end. Its disconnect must not remove the new session (the
    /// connection id does not match), so messages keep reaching the new `bob`.
    ///
    /// Deterministic: on this single-threaded runtime the broker handles every event queued
    /// before it runs in one go, so the old writer cannot end before the new `bob` is in.
    #[tokio::test]
    async fn stale_writer_does_not_remove_a_new_session() {
        let slots = Arc::new(Semaphore::new(8));
        let (events, receiver) = mpsc::channel(64);
        let tracker = TaskTracker::new();
        let (old_bob, mut old) = new_peer("bob", 1, &slots);
        let (new_bob, mut new) = new_peer("bob", 2, &slots);
        // The old bob's reader sends `Leave` (it broke a rule) after one line was routed to it.
        let queued = [
            old_bob,
            to_bob("1"),
            Event::Leave {
                name: "bob".to_string(),
                id: 1,
            },
            new_bob,
            to_bob("4"),
        ];
        for event in queued {
            events.send(event).await.expect("the channel has room");
        }
        tracker.spawn(broker_loop(
            receiver,
            tracker.clone(),
            Duration::from_secs(5),
        ));
        assert!(matches!(old.login.await, Ok(Login::Accepted)));
        assert!(
            matches!(new.login.await, Ok(Login::Accepted)),
            "the old bob left, so its name was free for the new one"
        );
        // The old writer writes what was queued before `Leave`, then sees its queue closed
        // and ends: its client sees the end. The writer's disconnect is sent in the same
        // poll, before this test task runs again.
        let old_line = tokio::time::timeout(Duration::from_secs(5), old.client.next()).await;
        assert!(
            matches!(&old_line, Ok(Some(Ok(line))) if line == "from alice: 1"),
            "the old bob got {old_line:?}"
        );
        let end = tokio::time::timeout(Duration::from_secs(5), old.client.next())
            .await
            .expect("the old bob's connection should close");
        assert!(end.is_none(), "the old bob got {end:?} after its line");
        // The broker handles the stale disconnect before this (it polls disconnects first).
        events
            .send(to_bob("5"))
            .await
            .expect("the broker is running");
        for expected in [
            "from alice: 4", // for the new bob
            "from alice: 5", // after the stale disconnect
        ] {
            let line = tokio::time::timeout(Duration::from_secs(5), new.client.next()).await;
            match line {
                Ok(Some(Ok(line))) => assert_eq!(line, expected),
                other => panic!(
                    "the new bob should receive `{expected}`, got {other:?}: the old writer's \
                     disconnect removed the new session"
                ),
            }
        }
    }
}
