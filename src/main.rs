//! The `relay` binary: everything lives in the library; this only hands over
//! the arguments and turns the result into the process exit code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(relay::run(std::env::args_os()))
}
