//! FortiGate emulator (work in progress).
