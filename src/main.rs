//! `referee`: the daemon and command-line tools.
fn main() {
    println!("referee");
}
