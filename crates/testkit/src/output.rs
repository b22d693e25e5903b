//! The lines a child process writes to a pipe, collected as they arrive, for tests to search
//! and to show when they fail.

use std::time::Duration;

use tokio::sync::mpsc;

/// Lines as they arrive from a reader of the pipe, plus every line already taken, so a test can
/// search them again and print them all when it fails.
#[derive(Debug)]
pub struct OutputLines {
    incoming: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl OutputLines {
    /// Lines sent on `incoming` by whatever reads the pipe.
    pub fn new(incoming: mpsc::UnboundedReceiver<String>) -> OutputLines {
        OutputLines {
            incoming,
            seen: Vec::new(),
        }
    }

    /// The first line containing `needle`, among those already seen or arriving within `limit`;
    /// `None` if none came (or the pipe closed first).
    pub async fn find(&mut self, needle: &str, limit: Duration) -> Option<String> {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(line.clone());
        }
        let deadline = tokio::time::Instant::now() + limit;
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.incoming.recv()).await {
            self.seen.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    }

    /// Every line received so far, without waiting.
    pub fn so_far(&mut self) -> &[String] {
        while let Ok(line) = self.incoming.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line is found whether it arrived before the search or during it; a search that finds
    /// nothing gives up at its limit, and every line stays available to print.
    #[tokio::test(start_paused = true)]
    async fn finds_lines_seen_or_arriving() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut lines = OutputLines::new(rx);
        for line in ["alice logged in", "bob logged in"] {
            tx.send(line.to_string()).expect("the receiver is alive");
        }
        let bob = lines.find("bob", Duration::from_secs(1)).await;
        assert_eq!(bob.as_deref(), Some("bob logged in"));
        let alice = lines.find("alice", Duration::ZERO).await;
        assert_eq!(alice.as_deref(), Some("alice logged in"), "already seen");
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send("carol logged in".to_string()).expect("alive");
            tx
        });
        let carol = lines.find("carol", Duration::from_secs(1)).await;
        assert_eq!(carol.as_deref(), Some("carol logged in"));
        let _tx = later.await.expect("the sender task ran");
        assert_eq!(lines.find("dave", Duration::from_secs(1)).await, None);
        assert_eq!(lines.so_far().len(), 3);
    }
}
