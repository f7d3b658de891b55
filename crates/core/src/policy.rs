//! policy (work in progress).
