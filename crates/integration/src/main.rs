//! `integration`: the blocking daemon and its operator subcommands.
mod decide;
mod ingest;
mod listen;

fn main() {}
