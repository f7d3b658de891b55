//! syslog (work in progress).
