//! The jobworker API as both sides of the wire see it: the gRPC protocol, the mutual-TLS
//! policy, and the identity a client certificate carries.
//!
//! `jobworkerd` serves [`pb::job_worker_server::JobWorkerServer`] over [`tls_incoming`];
//! `jobctl` calls it through [`connect`]. Both build their TLS configuration with [`tls`],
//! so the policy (TLS 1.3 only, two suites, post-quantum key exchange first, client
//! certificates required, EKU checked both ways) lives in one place.
//!
//! # Layout
//!
//! - [`pb`]: code generated from `proto/jobworker/v1/jobworker.proto` (messages, client,
//!   server trait), compiled by `build.rs` with the pure-Rust `protox`.
//! - [`tls`]: the rustls server and client configurations, loaded from PEM files.
//! - [`incoming`]: the server's accept loop: TCP, then a TLS handshake per connection in its
//!   own task with a timeout, yielding streams to tonic.
//! - [`client`]: dialling the server (TCP, TLS, HTTP/2) and returning a gRPC client.
//! - [`identity`]: user and groups from the verified client certificate.
//! - [`pki`] (feature `dev-pki`): a development certificate authority and the certificates it
//!   issues.
//! - [`paths`]: default locations (the development PKI's directory, XDG base directories).

#![warn(missing_docs)]

pub mod client;
pub mod identity;
pub mod incoming;
pub mod paths;
#[cfg(feature = "dev-pki")]
pub mod pki;
pub mod tls;

/// Code generated from `jobworker.proto` (package `jobworker.v1`).
// The generated items carry the proto's comments where it has them; the rest (e.g. the
// individual messages' fields) are described by the proto itself.
#[allow(missing_docs)]
pub mod pb {
    tonic::include_proto!("jobworker.v1");
}

pub use client::{ConnectError, connect};
pub use identity::{Identity, IdentityError};
pub use incoming::{TlsIncoming, tls_incoming};
pub use tls::{TlsError, client_config, server_config};
