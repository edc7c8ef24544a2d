//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it is compiled: one compiled script serves every
    // checkout sharing the target directory, and must look in the checkout being built.
    let root = format!("{}/../../proto", std::env::var("CARGO_MANIFEST_DIR")?);
    let files = [
        "homeport/events/v1/events.proto",
        "homeport/device/v1/device.proto",
        "homeport/audit/v1/audit.proto",
        "homeport/provisioning/v1/provisioning.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // Each file as well as the directory: a directory alone has missed edits to its files.
    for f in files {
        println!("cargo:rerun-if-changed={root}/{f}");
    }
    println!("cargo:rerun-if-changed={root}");
    Ok(())
}
