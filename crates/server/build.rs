//! Generates the worker service's server side from the protocol's .proto file, with the
//! message types taken from `buildman_proto` and the compact codec of `src/codec.rs` (the
//! codec is fixed at code generation time, so the server cannot reuse buildman_proto's).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from a crate that ships it, so a build needs nothing installed.
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    println!("cargo:rerun-if-changed=../proto/proto/buildman.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".buildman_pb", "::buildman_proto")
        .codec_path("crate::codec::CompactCodec")
        .compile_protos(&["../proto/proto/buildman.proto"], &["../proto/proto"])?;
    Ok(())
}
