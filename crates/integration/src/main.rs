//! `integration`: the blocking daemon and its operator subcommands.
mod decide;

fn main() {}
