//! Compiles `vmasim/v1/*.proto` with protox (pure Rust, no system `protoc`)
//! and generates prost messages plus tonic client and server stubs.
//!
//! `compile_fds` ignores `file_descriptor_set_path`, so the encoded
//! descriptor set is written to `OUT_DIR/vmasim_descriptor.bin` here; the
//! crate exposes it for gRPC reflection as `FILE_DESCRIPTOR_SET`.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "vmasim/v1/types.proto",
    "vmasim/v1/race.proto",
    "vmasim/v1/address_space.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("vmasim_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
