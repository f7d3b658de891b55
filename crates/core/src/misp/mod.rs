//! misp (work in progress).
