//! The `accio` binary: parse the command line, run, decide the exit code. Everything else
//! lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    accio::app::main()
}
