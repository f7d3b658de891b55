//! `housekeeping` binary.
fn main() {}
