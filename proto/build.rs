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
        "proto/latch/v1/watch.proto",
        "proto/latch/v1/registry.proto",
        "proto/latch/v1/maintenance.proto",
        "proto/latch/wire/v1/watch.proto",
        "proto/latch/internal/v1/internal.proto",
        "proto/latch/internal/v1/log.proto",
    ];
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .file_descriptor_set_path(out_dir.join("latch_descriptor.bin"))
        .bytes([".latch.wire.v1.WatchResponse.events"])
        // Keeps `Outcome` small: it travels in every reply of the raft thread.
        .boxed(".latch.internal.v1.RegistryResult.instance")
        // Maps in key order: a HashMap encodes in a random order, and what the log carries and
        // the state machine stores must be the same bytes on every member (and on every retry).
        .btree_map([".latch.internal.v1.Instance.meta", ".latch.v1.ServiceInstance.meta"])
        .compile_protos(&protos, &["proto"])?;
    // The server side of latch.v1.Watch, answering with the wire form of WatchResponse (see
    // proto/latch/wire/v1/watch.proto); clients use the generated latch.v1 client.
    let watch = tonic_build::manual::Method::builder()
        .name("watch")
        .route_name("Watch")
        .input_type("crate::v1::WatchRequest")
        .output_type("crate::wire::WatchResponse")
        .codec_path("tonic::codec::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service =
        tonic_build::manual::Service::builder().name("Watch").package("latch.v1").method(watch).build();
    tonic_build::manual::Builder::new().build_client(false).compile(&[service]);
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
