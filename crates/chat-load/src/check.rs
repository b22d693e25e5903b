//! The delivery checker: who sends to whom ([`Plan`]), what each client received ([`Inbox`]),
//! and the verdict over a whole run ([`tally`]).
//!
//! Every message a sender writes goes to the same recipients, so the sender's message number is
//! also the sequence number of each (sender, receiver) pair: receiver `r` must see sender `s`'s
//! messages as `0, 1, 2, …` with nothing missing, nothing twice and nothing out of order. A gap
//! is remembered as a *hole*; a hole filled later was a reordering, a hole still open at the end
//! is a loss, and a number below the next expected one that fills no hole is a duplicate. A
//! message from a client that does not send to this receiver, or whose text names another
//! sender than its `from` prefix, is a misdelivery.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::wire::{self, Names, Received};

/// How many problem descriptions a run keeps (the counts are always complete).
const PROBLEMS_KEPT: usize = 10;

/// Who sends to whom: client `s` sends every one of its messages to `recipients(s)`.
#[derive(Debug, Clone)]
pub struct Plan {
    recipients: Vec<Vec<u32>>,
    senders: Vec<Vec<u32>>,
}

impl Plan {
    /// `n` clients in a ring, each sending to the `k` clients after it (itself too when `k == n`).
    pub fn ring(n: u32, k: u32) -> Plan {
        assert!(
            k <= n,
            "a ring of {n} clients has no {k} distinct recipients"
        );
        Plan::from_pairs(
            n,
            (0..n).flat_map(|s| (1..=k).map(move |j| (s, (s + j) % n))),
        )
    }

    /// `n` clients; each `(sender, receiver)` pair is one delivery route.
    pub fn from_pairs(n: u32, pairs: impl IntoIterator<Item = (u32, u32)>) -> Plan {
        let mut recipients = vec![Vec::new(); n as usize];
        let mut senders = vec![Vec::new(); n as usize];
        for (s, r) in pairs {
            recipients[s as usize].push(r);
            senders[r as usize].push(s);
        }
        Plan {
            recipients,
            senders,
        }
    }

    /// How many clients the plan covers.
    pub fn clients(&self) -> u32 {
        self.recipients.len() as u32
    }

    /// The clients `s` sends to.
    pub fn recipients(&self, s: u32) -> &[u32] {
        &self.recipients[s as usize]
    }

    /// The clients that send to `r`.
    pub fn senders(&self, r: u32) -> &[u32] {
        &self.senders[r as usize]
    }

    fn sends_to(&self, s: u32, r: u32) -> bool {
        self.recipients
            .get(s as usize)
            .is_some_and(|rs| rs.contains(&r))
    }
}

/// Hashes sender indices. They are small integers this tool chose, not input from an adversary,
/// so one multiplication spreads them well enough and costs far less than SipHash on the path
/// every delivery takes.
#[derive(Debug, Default, Clone, Copy)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Pairs = HashMap<u32, Pair, BuildHasherDefault<IndexHasher>>;

/// The state of one (sender, receiver) pair as seen by the receiver.
#[derive(Debug, Default, Clone)]
struct Pair {
    /// One past the highest sequence number seen.
    next: u64,
    /// Missing ranges below `next`, `start -> end` (exclusive).
    holes: BTreeMap<u64, u64>,
    duplicated: u64,
    reordered: u64,
}

impl Pair {
    /// Takes `seq` out of the holes if it is in one; returns whether it was.
    fn fill(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.holes.range(..=seq).next_back() else {
            return false;
        };
        if seq >= end {
            return false;
        }
        self.holes.remove(&start);
        if start < seq {
            self.holes.insert(start, seq);
        }
        if seq + 1 < end {
            self.holes.insert(seq + 1, end);
        }
        true
    }
}

/// What happened to one received line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The next message of its pair, or a late one that fills a gap: counts as delivered.
    /// Carries the send timestamp from the message.
    Delivered { sent_at_ns: u64 },
    /// Already received once.
    Duplicate,
    /// Not meant for this client, or not a message of this run at all.
    Misdelivered,
}

/// Everything one client received, checked line by line.
#[derive(Debug, Clone)]
pub struct Inbox {
    me: u32,
    pairs: Pairs,
    distinct: u64,
    misdelivered: u64,
    problems: Vec<String>,
}

impl Inbox {
    /// An empty inbox for client `me`.
    pub fn new(me: u32) -> Inbox {
        Inbox {
            me,
            pairs: Pairs::default(),
            distinct: 0,
            misdelivered: 0,
            problems: Vec::new(),
        }
    }

    /// How many distinct messages arrived so far (duplicates and misdeliveries not counted).
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Checks one received line (without its newline).
    pub fn receive(&mut self, plan: &Plan, names: &Names, line: &[u8]) -> Outcome {
        let msg = match wire::parse(names, line) {
            Ok(msg) => msg,
            Err(why) => {
                let text = String::from_utf8_lossy(line);
                return self.misdelivered(format!("{}: {why}: `{text}`", names.name(self.me)));
            }
        };
        let Received {
            from,
            sender,
            seq,
            sent_at_ns,
        } = msg;
        if from != sender {
            return self.misdelivered(format!(
                "{}: message {seq} of {} arrived labelled `from {}`",
                names.name(self.me),
                names.name(sender),
                names.name(from)
            ));
        }
        if !plan.sends_to(sender, self.me) {
            return self.misdelivered(format!(
                "{}: received message {seq} of {}, which never sends to it",
                names.name(self.me),
                names.name(sender)
            ));
        }
        let pair = self.pairs.entry(sender).or_default();
        if seq >= pair.next {
            if seq > pair.next {
                pair.holes.insert(pair.next, seq);
            }
            pair.next = seq + 1;
            self.distinct += 1;
            Outcome::Delivered { sent_at_ns }
        } else if pair.fill(seq) {
            pair.reordered += 1;
            self.distinct += 1;
            let why = format!(
                "{}: message {seq} of {} arrived after message {}: reordered",
                names.name(self.me),
                names.name(sender),
                pair.next - 1
            );
            self.note(why);
            Outcome::Delivered { sent_at_ns }
        } else {
            pair.duplicated += 1;
            let why = format!(
                "{}: message {seq} of {} arrived twice",
                names.name(self.me),
                names.name(sender)
            );
            self.note(why);
            Outcome::Duplicate
        }
    }

    fn misdelivered(&mut self, why: String) -> Outcome {
        self.misdelivered += 1;
        self.note(why);
        Outcome::Misdelivered
    }

    fn note(&mut self, why: String) {
        if self.problems.len() < PROBLEMS_KEPT {
            self.problems.push(why);
        }
    }

    /// One past the highest message number received from `sender` (0 if none).
    pub fn seen_up_to(&self, sender: u32) -> u64 {
        self.pairs.get(&sender).map_or(0, |p| p.next)
    }
}

/// The verdict over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct messages delivered to the right receiver.
    pub delivered: u64,
    /// Messages that should have arrived and did not.
    pub lost: u64,
    /// Messages that arrived more than once (each extra copy counts).
    pub duplicated: u64,
    /// Messages that arrived after a later message of the same pair.
    pub reordered: u64,
    /// Lines that reached a client they were not meant for, or were not ours at all.
    pub misdelivered: u64,
    /// The first few problems, in words.
    pub problems: Vec<String>,
}

impl Tally {
    /// True when nothing was lost, duplicated, reordered or misdelivered.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.misdelivered == 0
    }
}

/// Judges a run: `required(s)` is how many of sender `s`'s messages each of its recipients must
/// have received (all it sent, or during a shutdown all the server accepted).
pub fn tally(
    plan: &Plan,
    names: &Names,
    inboxes: &[Inbox],
    required: impl Fn(u32) -> u64,
) -> Tally {
    let mut t = Tally::default();
    for inbox in inboxes {
        t.delivered += inbox.distinct;
        t.misdelivered += inbox.misdelivered;
        for problem in &inbox.problems {
            if t.problems.len() < PROBLEMS_KEPT {
                t.problems.push(problem.clone());
            }
        }
        for &s in plan.senders(inbox.me) {
            let need = required(s);
            let pair = inbox.pairs.get(&s).cloned().unwrap_or_default();
            t.duplicated += pair.duplicated;
            t.reordered += pair.reordered;
            // Distinct messages received below `need`: everything below `min(next, need)` except
            // the holes there. Numbers at or above `need` (never sent, or not accepted) don't help.
            let holes_below: u64 = pair
                .holes
                .range(..need)
                .map(|(&start, &end)| end.min(need) - start)
                .sum();
            let have = pair.next.min(need) - holes_below;
            let lost = need - have;
            if lost > 0 {
                t.lost += lost;
                if t.problems.len() < PROBLEMS_KEPT {
                    let first = first_missing(&pair, need);
                    t.problems.push(format!(
                        "{}: {lost} of the first {need} messages of {} never arrived (the first \
                         missing is message {first})",
                        names.name(inbox.me),
                        names.name(s)
                    ));
                }
            }
        }
    }
    t
}

fn first_missing(pair: &Pair, need: u64) -> u64 {
    match pair.holes.iter().next() {
        Some((&start, _)) if start < need => start,
        _ => pair.next.min(need),
    }
}

/// For a shutdown: how many messages of each sender the server certainly accepted. A reader
/// reads a connection's lines in order, so if message `n` of `s` reached anyone, the server read
/// every message of `s` before it: they were accepted and must all be delivered.
pub fn accepted(plan: &Plan, inboxes: &[Inbox]) -> Vec<u64> {
    let mut accepted = vec![0; plan.clients() as usize];
    for inbox in inboxes {
        for (&s, pair) in &inbox.pairs {
            let a = &mut accepted[s as usize];
            *a = (*a).max(pair.next);
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::with_tag("t")
    }

    /// Feeds client `me` the messages `(sender, seq)` and returns its inbox.
    fn feed(plan: &Plan, me: u32, msgs: &[(u32, u64)]) -> Inbox {
        let names = names();
        let mut inbox = Inbox::new(me);
        for &(s, seq) in msgs {
            let line = wire::received_line(&names, s, seq, 0);
            inbox.receive(plan, &names, line.as_bytes());
        }
        inbox
    }

    /// A complete, in-order stream from every sender is clean.
    #[test]
    fn clean_run_is_clean() {
        let plan = Plan::ring(3, 2);
        let a = feed(&plan, 0, &[(2, 0), (1, 0), (1, 1), (2, 1)]);
        let t = tally(&plan, &names(), &[a], |_| 2);
        assert!(t.clean(), "{t:?}");
        assert_eq!(t.delivered, 4);
    }

    /// A message that never arrives is counted as lost, also when it is the last one.
    #[test]
    fn detects_loss() {
        let plan = Plan::ring(2, 1);
        let gap = feed(&plan, 1, &[(0, 0), (0, 2), (0, 3)]);
        let t = tally(&plan, &names(), &[gap], |_| 4);
        assert_eq!((t.lost, t.reordered, t.duplicated), (1, 0, 0), "{t:?}");
        assert!(
            t.problems[0].contains("first missing is message 1"),
            "{t:?}"
        );

        let tail = feed(&plan, 1, &[(0, 0), (0, 1)]);
        let t = tally(&plan, &names(), &[tail], |_| 4);
        assert_eq!(t.lost, 2, "{t:?}");

        let nothing = Inbox::new(1);
        let t = tally(&plan, &names(), &[nothing], |_| 4);
        assert_eq!(t.lost, 4, "{t:?}");
    }

    /// A message that arrives after a later one of the same pair is a reordering, not a loss.
    #[test]
    fn detects_reordering() {
        let plan = Plan::ring(2, 1);
        let inbox = feed(&plan, 1, &[(0, 0), (0, 2), (0, 1), (0, 3)]);
        let t = tally(&plan, &names(), &[inbox], |_| 4);
        assert_eq!((t.lost, t.reordered, t.duplicated), (0, 1, 0), "{t:?}");
        assert_eq!(t.delivered, 4);
        assert!(!t.clean());
    }

    /// A message that arrives twice is a duplicate, whether or not it was the latest one.
    #[test]
    fn detects_duplication() {
        let plan = Plan::ring(2, 1);
        let inbox = feed(&plan, 1, &[(0, 0), (0, 1), (0, 1), (0, 2), (0, 0)]);
        let t = tally(&plan, &names(), &[inbox], |_| 3);
        assert_eq!((t.lost, t.reordered, t.duplicated), (0, 0, 2), "{t:?}");
        assert_eq!(t.delivered, 3);
        // A duplicate does not hide a loss: 0 0 1 is two distinct of three.
        let inbox = feed(&plan, 1, &[(0, 0), (0, 0), (0, 1)]);
        let t = tally(&plan, &names(), &[inbox], |_| 3);
        assert_eq!((t.lost, t.duplicated), (1, 1), "{t:?}");
    }

    /// Messages for someone else, with a forged sender, or not from this run are misdeliveries.
    #[test]
    fn detects_misdelivery() {
        let names = names();
        // 0 -> 1 only: client 2 must receive nothing.
        let plan = Plan::from_pairs(3, [(0, 1)]);
        let mut inbox = Inbox::new(2);
        let line = wire::received_line(&names, 0, 0, 0);
        assert_eq!(
            inbox.receive(&plan, &names, line.as_bytes()),
            Outcome::Misdelivered
        );
        // The text says sender 0 but the server labelled it as coming from 2.
        let mut inbox = Inbox::new(1);
        let forged = format!("from {}: 0 0 0", names.name(2));
        assert_eq!(
            inbox.receive(&plan, &names, forged.as_bytes()),
            Outcome::Misdelivered
        );
        // Lines of another run or another program.
        for stranger in ["from mallory: 0 0 0", "from t-0: hello there", "garbage"] {
            assert_eq!(
                inbox.receive(&plan, &names, stranger.as_bytes()),
                Outcome::Misdelivered,
                "{stranger}"
            );
        }
        let t = tally(&plan, &names, &[inbox], |_| 0);
        assert_eq!(t.misdelivered, 4, "{t:?}");
        assert!(!t.clean());
    }

    /// Reordering across a long gap is tracked per message: filling the middle of a hole leaves
    /// both sides of it missing.
    #[test]
    fn holes_split_when_filled() {
        let plan = Plan::ring(2, 1);
        let inbox = feed(&plan, 1, &[(0, 0), (0, 9), (0, 5), (0, 1), (0, 8)]);
        let t = tally(&plan, &names(), &[inbox], |_| 10);
        assert_eq!((t.lost, t.reordered), (5, 3), "{t:?}");
    }

    /// Pairs are independent: one sender's gap is not hidden by another sender's messages.
    #[test]
    fn pairs_are_independent() {
        let plan = Plan::ring(3, 2);
        let inbox = feed(&plan, 0, &[(1, 0), (2, 0), (2, 1), (1, 2)]);
        let t = tally(&plan, &names(), &[inbox], |_| 3);
        assert_eq!(t.lost, 1 + 1, "{t:?}");
    }

    /// During a shutdown a message counts as accepted once a later message of its sender reached
    /// anyone; accepted messages that some recipient misses are lost, unaccepted ones are not.
    #[test]
    fn shutdown_requires_the_accepted_prefix() {
        // Sender 0 sends to 1 and 2.
        let plan = Plan::from_pairs(3, [(0, 1), (0, 2)]);
        let one = feed(&plan, 1, &[(0, 0), (0, 1), (0, 2), (0, 3)]);
        let two = feed(&plan, 2, &[(0, 0), (0, 1)]);
        let inboxes = [one, two];
        let accepted = accepted(&plan, &inboxes);
        assert_eq!(accepted, vec![4, 0, 0]);
        let t = tally(&plan, &names(), &inboxes, |s| accepted[s as usize]);
        assert_eq!(t.lost, 2, "client 2 misses messages 2 and 3: {t:?}");

        // Both got the same prefix: nothing lost, whatever was sent after it.
        let plan = Plan::from_pairs(3, [(0, 1), (0, 2)]);
        let inboxes = [
            feed(&plan, 1, &[(0, 0), (0, 1)]),
            feed(&plan, 2, &[(0, 0), (0, 1)]),
        ];
        let prefix = super::accepted(&plan, &inboxes);
        let t = tally(&plan, &names(), &inboxes, |s| prefix[s as usize]);
        assert!(t.clean(), "{t:?}");
    }
}
