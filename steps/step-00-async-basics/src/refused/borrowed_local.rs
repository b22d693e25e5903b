// Refused with E0373: the task may outlive `main`'s locals, but the async block borrows `name`.
#[tokio::main]
async fn main() {
    let name = String::from("alice");
    let task = tokio::spawn(async {
        println!("hello, {name}");
    });
    task.await.expect("the task does not panic");
}
