//! The `colony` command.
fn main() {}
