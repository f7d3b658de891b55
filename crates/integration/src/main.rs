//! `integration` binary.
fn main() {}
