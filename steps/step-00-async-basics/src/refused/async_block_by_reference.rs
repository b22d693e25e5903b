// Refused with E0277: a future made by an `async` block is not `Unpin` either.
#[tokio::main]
async fn main() {
    let mut greeting = async { "hello" };
    let polled = futures::poll!(&mut greeting);
    println!("{polled:?}");
}
