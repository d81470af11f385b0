//! Integration tests of nomade-artifact: real stores on temporary directories,
//! Sender and Receiver driven in process.

mod large;
mod roundtrip;
mod support;
