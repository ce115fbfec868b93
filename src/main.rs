//! The `callboard` command line.

fn main() {
    println!(
        "callboard {}: the server lands with its issue; try `cargo run --example chat`.",
        env!("CARGO_PKG_VERSION")
    );
}
