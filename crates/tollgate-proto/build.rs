//! Generates the decision API from `proto/` with a vendored `protoc`, so a fresh machine
//! needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let proto_root = "../../proto";
    let files = [
        format!("{proto_root}/tollgate/v1/decision.proto"),
        format!("{proto_root}/envoy/service/ratelimit/v3/rls.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure().compile_protos(&files, &[proto_root.to_owned()])?;
    Ok(())
}
