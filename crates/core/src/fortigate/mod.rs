//! fortigate (work in progress).
