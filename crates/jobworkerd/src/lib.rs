//! jobworkerd: serves the jobworker API over mutual TLS 1.3.
//!
//! # Layout
//! - [`server`]: accepts mTLS connections, serves the API, shuts down in order.
//! - [`service`]: the RPC handlers and the one mapping of library errors to gRPC status codes.
//! - [`authz`]: the caller's identity from its certificate, and who may touch which job.
//! - [`notify`]: `READY=1` and `STOPPING=1` for systemd (`Type=notify`).
//!
//! The binary (`main.rs`) parses flags, sets up logging and runs `serve`, `certs init` or
//! `certs add-user`.

pub mod authz;
pub mod notify;
pub mod server;
pub mod service;

pub use server::Server;
