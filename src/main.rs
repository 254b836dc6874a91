//! The `kindling` binary: everything is in [`kindling::cli`].

fn main() -> std::process::ExitCode {
    kindling::cli::main()
}
