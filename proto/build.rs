//! Compiles the .proto files with the protoc shipped by `protoc-bin-vendored`, so that a fresh
//! machine needs nothing installed, and writes their descriptors (`latch_descriptor.bin`) for
//! gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/latch/v1/kv.proto",
        "proto/latch/v1/cluster.proto",
        "proto/latch/v1/session.proto",
        "proto/latch/v1/lock.proto",
        "proto/latch/v1/election.proto",
        "proto/latch/internal/v1/internal.proto",
        "proto/latch/internal/v1/log.proto",
    ];
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .file_descriptor_set_path(out_dir.join("latch_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
