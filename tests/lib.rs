//! Helpers for the end-to-end tests: locate the built binaries, start emulators, write configs.
