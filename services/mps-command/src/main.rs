//! mps-command binary.
fn main() {}
