//! Compiles the .proto files with the protoc shipped by `protoc-bin-vendored`, so that a fresh
//! machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let protos =
        ["proto/latch/v1/kv.proto", "proto/latch/v1/cluster.proto", "proto/latch/internal/v1/internal.proto"];
    tonic_build::configure().compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
