//! The TCP fact behind the client's "read until the server closes" on end of input, checked on
//! this machine's loopback: closing a socket that still holds unread data resets the connection.

use std::time::Duration;

use testkit::TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what is left on `server` until end of file or an error; returns what came and how it ended.
async fn read_to_end(server: &mut TcpStream) -> (String, std::io::Result<usize>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(TIMEOUT, server.read(&mut buf))
            .await
            .expect("the closed connection should end the read within the deadline")
        {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), Ok(0)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (String::from_utf8_lossy(&got).into_owned(), Err(e)),
        }
    }
}

/// Closing with unread data sends a reset: the peer's read fails instead of ending cleanly.
#[tokio::test]
async fn close_with_unread_data_resets() {
    let (mut client, mut server) = testkit::connected_pair().await;
    server
        .write_all(b"from bob: never read\n")
        .await
        .expect("writing on loopback");
    client
        .write_all(b"bob: bye\n")
        .await
        .expect("writing on loopback");
    // Let the server's line reach the client's receive buffer before the client closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(client);
    let (_, end) = read_to_end(&mut server).await;
    let err = end.expect_err("the server should see an error, not an end of file");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

/// Closing after reading everything is orderly: the peer reads all we sent, then end of file.
#[tokio::test]
async fn close_after_reading_everything_is_orderly() {
    let (mut client, mut server) = testkit::connected_pair().await;
    client
        .write_all(b"bob: bye\n")
        .await
        .expect("writing on loopback");
    drop(client);
    let (got, end) = read_to_end(&mut server).await;
    assert_eq!(got, "bob: bye\n");
    assert!(matches!(end, Ok(0)), "expected end of file, got {end:?}");
}
