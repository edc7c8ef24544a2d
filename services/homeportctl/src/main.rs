//! `homeportctl`: see the library for the commands.

fn main() {
    homeportctl::main_entry()
}
