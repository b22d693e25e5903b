// Refused with E0752: nothing would poll the future an `async fn main` returns.
async fn main() {
    println!("hello");
}
