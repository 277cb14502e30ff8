//! A whole session, driven the way the shell drives it (crate docs, "The
//! driving contract"), from an arbitrary sequence of client bytes, server
//! bytes, socket results and clock ticks. The input format and the
//! invariants are in `session_driver.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "session_driver.rs"]
mod session_driver;

fuzz_target!(|data: &[u8]| session_driver::run(data));
