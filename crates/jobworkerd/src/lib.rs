//! jobworkerd: serves the jobworker API over mutual TLS 1.3.
//!
//! # Layout
//! - [`server`]: the connection loop (connection cap, TLS handshake, identity, HTTP/2) and the
//!   orderly shutdown; gRPC health and reflection are served beside the API.
//! - [`service`]: the RPC handlers.
//! - [`convert`]: proto to library and back, and the one mapping of library errors to gRPC
//!   status codes.
//! - [`authz`]: the caller's identity from its connection, and who may touch which job.
//! - [`metrics`]: the Prometheus metrics and their plain-HTTP endpoint.
//! - [`audit`]: the audit log of mutating and refused requests.
//! - [`notify`]: `READY=1` and `STOPPING=1` for systemd (`Type=notify`).
//!
//! The binary (`main.rs`) parses flags, sets up logging and runs `serve`, `certs init` or
//! `certs add-user`.

pub mod audit;
pub mod authz;
pub mod convert;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod service;

pub use audit::AuditLog;
pub use server::{MAX_CONCURRENT_STREAMS, Options, Server};
