//! Compiles Keel's etcd v3 .proto files with protox (a protobuf compiler written in Rust, so
//! the build needs nothing but the Rust toolchain) and generates the messages, the server
//! traits and the clients with tonic-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["etcdserverpb/rpc.proto"], ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        // Clients are generic over their transport; tests bring tonic's channel.
        .build_transport(false)
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
