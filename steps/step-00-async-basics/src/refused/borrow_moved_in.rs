// Refused with E0597: `async move` moves the reference in, but it still points at a local.
#[tokio::main]
async fn main() {
    let name = String::from("alice");
    let name_ref: &str = &name;
    let task = tokio::spawn(async move {
        println!("hello, {name_ref}");
    });
    task.await.expect("the task does not panic");
}
