fn main() {
    println!("parapet dataplane: not yet");
}
