//! jobworkerd: serves the jobworker API over mutual TLS 1.3.
//!
//! # Layout
//! - [`server`]: accepts mTLS connections, serves the API, shuts down in order.
//! - [`service`]: the RPC handlers and the one mapping of library errors to gRPC status codes.
//! - [`authz`]: the caller's identity from its certificate, and who may touch which job.
//!
//! The binary (`main.rs`) parses flags, sets up logging and runs `serve` or `certs init`.

pub mod authz;
pub mod server;
pub mod service;

pub use server::Server;
