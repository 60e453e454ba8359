//! The jobworker API as both sides of the wire see it: the gRPC protocol, the mutual-TLS
//! policy, and the identity a client certificate carries.
//!
//! `jobworkerd` serves [`pb::job_worker_server::JobWorkerServer`] over connections it accepts
//! itself and secures with [`incoming::handshake`] (a tonic `Server` can use [`tls_incoming`]
//! instead); `jobctl` calls it through [`connect`]. Both build their TLS configuration with [`tls`],
//! so the policy (TLS 1.3 only, two suites, post-quantum key exchange first, client
//! certificates required, EKU checked both ways) lives in one place.
//!
//! # Layout
//!
//! - [`pb`]: code generated from `proto/jobworker/v1/jobworker.proto` (messages, client,
//!   server trait), compiled by `build.rs` with the pure-Rust `protox`; its descriptors, for
//!   reflection, in [`FILE_DESCRIPTOR_SET`].
//! - [`codec`]: the wire encoding (prost, with encoder buffers bounded for long-lived streams).
//! - [`tls`]: the rustls server and client configurations, loaded from PEM files.
//! - [`incoming`]: one server-side TLS handshake with a timeout and the reason it failed, and
//!   an accept loop built on it that yields finished TLS streams to a tonic `Server`.
//! - [`client`]: dialling the server (TCP, TLS, HTTP/2) and returning a gRPC client.
//! - [`identity`]: user and groups from the verified client certificate.
//! - [`pki`] (feature `dev-pki`): a development certificate authority and the certificates it
//!   issues.
//! - [`paths`]: default locations (the development PKI's directory, XDG base directories).

#![warn(missing_docs)]

pub mod client;
pub mod codec;
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

/// The encoded `google.protobuf.FileDescriptorSet` of `jobworker.proto` and everything it
/// imports, as compiled by `build.rs`: what a server needs to offer gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jobworker_descriptor.bin"));

pub use client::{ConnectError, connect, connect_within};
pub use identity::{Identity, IdentityError};
pub use incoming::{HandshakeError, HandshakeFailure, TlsIncoming, handshake, tls_incoming};
pub use tls::{TlsError, client_config, server_config};

impl pb::StreamOutputResponse {
    /// The bytes this message carries: empty for the final frame.
    pub fn data(&self) -> &[u8] {
        match &self.frame {
            Some(pb::stream_output_response::Frame::Chunk(chunk)) => &chunk.data,
            _ => &[],
        }
    }

    /// The job's final status, if this is the last message of the stream.
    pub fn end(&self) -> Option<&pb::OutputEnd> {
        match &self.frame {
            Some(pb::stream_output_response::Frame::End(end)) => Some(end),
            _ => None,
        }
    }
}
