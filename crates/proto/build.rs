fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from a crate that ships it, so a build needs nothing installed.
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    println!("cargo:rerun-if-changed=proto/buildman.proto");
    tonic_prost_build::configure().compile_protos(&["proto/buildman.proto"], &["proto"])?;
    Ok(())
}
