//! Generates the `rewardloop.v1` gRPC code and the file descriptor set served by reflection.

use std::{env, error::Error, path::PathBuf};

const PROTO_ROOT: &str = "../../proto";
const PROTO_FILE: &str = "../../proto/rewardloop/v1/inner_reward.proto";

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={PROTO_FILE}");

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("rewardloop_v1_descriptor.bin"))
        .compile_protos(&[PROTO_FILE], &[PROTO_ROOT])?;
    Ok(())
}
