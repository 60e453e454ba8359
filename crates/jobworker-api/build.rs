//! Compiles `proto/jobworker/v1/jobworker.proto` into Rust (client and server), and writes its
//! encoded `FileDescriptorSet` for server reflection.
//!
//! `protox` parses the proto in pure Rust, so building needs no `protoc` on the machine.

use std::error::Error;
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let proto = proto_root.join("jobworker/v1/jobworker.proto");

    println!("cargo:rerun-if-changed={}", proto.display());

    // `protox::compile` includes every imported file (e.g. well-known types), which reflection
    // clients need to resolve the service's messages, and the source comments, which they show.
    let descriptors = protox::compile([&proto], [&proto_root])?;
    std::fs::write(
        out_dir.join("jobworker_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Output chunks are handed from the job's log to the encoder without a copy.
        .bytes(".jobworker.v1.OutputChunk.data")
        // The last frame is rare and large; boxed, every chunk frame stays small.
        .boxed(".jobworker.v1.StreamOutputResponse.frame.end")
        // prost with encoder buffers that an idle output stream does not keep large.
        .codec_path("crate::codec::BoundedCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
