//! MISP emulator (work in progress).
