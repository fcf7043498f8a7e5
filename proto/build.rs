//! Compiles `drcut/v1/*.proto` with protox (pure Rust, no system protoc) and keeps the file
//! descriptor set in OUT_DIR so the server can offer gRPC reflection.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["drcut/v1/control.proto", "drcut/v1/agent.proto", "drcut/v1/raft.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("drcut_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
