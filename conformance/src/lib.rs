//! policyhub-conformance: the runtime contract, executable.
//!
//! The kit starts a real `policyhub serve`, puts a fault proxy it controls
//! between the server and the runtime under test, and drives that runtime
//! through a small HTTP/JSON test-service protocol that any language can
//! implement. Each test names the obligations of the contract (the book's
//! "The runtime contract") it checks.
//!
//! - [`protocol`]: the test-service protocol's messages.
//! - [`harness`]: the runner: a fresh server and proxy per test,
//!   capabilities, one line per test, the JSON report.
//! - [`server`]: the real server: start, SIGKILL, restart, reconfigure,
//!   wind back, fork; the calls the kit makes to it.
//! - [`proxy`]: the faults on the link.
//! - [`service`]: the kit's client of a test service.
//! - [`tls`]: certificate authorities, and the TLS front before the proxy.
//! - [`witness`]: witnesses of the server's log: start, stop, restart.
//! - `tests`: the tests, by area.

pub mod harness;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod service;
mod tests;
pub mod tls;
pub mod witness;

pub use tests::all as all_tests;
