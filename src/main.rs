//! The `callboard` command line: `serve`, `run`, `check-config`, `loadtest` (see
//! [`callboard::cli`]).

/// With the `mimalloc` feature, the binary allocates with mimalloc (docs/performance.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(callboard::cli::main());
}
