//! Generates the client of `policyhub.v1` from the repository's `proto/`
//! with protox (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let file_descriptors = protox::compile(
        [
            "policyhub/v1/types.proto",
            "policyhub/v1/bundle_service.proto",
        ],
        ["../proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(file_descriptors)?;
    Ok(())
}
