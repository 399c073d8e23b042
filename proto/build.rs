//! Compiles `*.proto` with protox (a pure-Rust protobuf compiler, so a fresh machine needs no
//! system `protoc`) and generates prost messages plus tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "metapb.proto",
        "kvpb.proto",
        "raft_serverpb.proto",
        "placementpb.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
