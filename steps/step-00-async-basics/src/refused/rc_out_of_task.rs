// Refused with E0277: the task's output comes back through its `JoinHandle`, maybe on another
// thread, and an `Rc` cannot be sent between threads.
use std::rc::Rc;

#[tokio::main]
async fn main() {
    let task = tokio::spawn(async { Rc::new(String::from("alice")) });
    let name = task.await.expect("the task does not panic");
    println!("hello, {name}");
}
