// Refused with E0277: `Sleep` is not `Unpin`, so `&mut deadline` is not a future to poll.
use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut deadline = tokio::time::sleep(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut deadline => break,
            () = tokio::time::sleep(Duration::from_millis(300)) => println!("tick"),
        }
    }
}
