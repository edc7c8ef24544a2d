//! homeportctl: the operator CLI.
fn main() {}
