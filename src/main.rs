//! The `callboard` command line: `serve`, `run`, `check-config` (see [`callboard::cli`]).

fn main() {
    std::process::exit(callboard::cli::main());
}
