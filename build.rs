//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes
//! the encoded descriptor set that server reflection serves, and the
//! OpenAPI document of the HTTP/JSON port generated from the same
//! descriptors; the table of the console's files, which the binary embeds;
//! also the client of the etcd subset the watch fan-out benchmark calls.

#[path = "build/openapi.rs"]
mod openapi;

use std::{
    env, fs,
    path::{Path, PathBuf},
};

const PROTOS: &[&str] = &[
    "policyhub/v1/types.proto",
    "policyhub/v1/policy_service.proto",
    "policyhub/v1/bundle_service.proto",
    "policyhub/v1/sign_in_service.proto",
    "policyhub/v1/subscription_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by protox itself, which keeps the options' extensions (the
    // `google.api.http` routes the HTTP port reads); prost's types would
    // drop them.
    let encoded = compiler.encode_file_descriptor_set();
    fs::write(out_dir.join("policyhub_descriptor.bin"), &encoded)?;
    let pool = prost_reflect::DescriptorPool::decode(encoded.as_slice())?;
    fs::write(
        out_dir.join("openapi.json"),
        serde_json::to_string_pretty(&openapi::document(&pool, env!("CARGO_PKG_VERSION")))?,
    )?;
    let file_descriptors = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-stream buffers: a server holds many idle watch streams.
        .codec_path("crate::grpc::codec::CompactCodec")
        // Watch messages are the watch's own type, encoded by hand so that
        // each bundle is encoded once and shared by every stream (see
        // src/grpc/watch_message.rs).
        .extern_path(
            ".policyhub.v1.WatchActiveResponse",
            "crate::watch::WatchMessage",
        )
        .compile_fds_with_config(file_descriptors, {
            // `prost::Name`: the CLI finds each reply's descriptor by name
            // to print it in the protobuf JSON mapping.
            let mut config = tonic_prost_build::Config::new();
            config.enable_type_names();
            // An OPA bundle is built once and shared by every request.
            config.bytes([".policyhub.v1.OpaBundle.tarball"]);
            config
        })?;

    println!("cargo:rerun-if-changed=console");
    fs::write(
        out_dir.join("console_files.rs"),
        console_files(Path::new("console"))?,
    )?;

    println!("cargo:rerun-if-changed=benches/proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile(["etcdserverpb.proto"], ["benches/proto"])?)?;
    Ok(())
}

/// `&[(path, bytes)]` of every file under `root`, by path relative to it,
/// each embedded with `include_bytes!`.
fn console_files(root: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in fs::read_dir(&directory)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut table = String::from("&[\n");
    for file in files {
        let relative = file
            .strip_prefix(root)?
            .to_str()
            .ok_or("a non-UTF-8 path")?;
        let absolute = fs::canonicalize(&file)?;
        table.push_str(&format!(
            "    ({relative:?}, include_bytes!({:?}).as_slice()),\n",
            absolute.to_str().ok_or("a non-UTF-8 path")?
        ));
    }
    table.push(']');
    Ok(table)
}
