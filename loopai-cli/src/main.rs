//! The `loopai` binary: [`loopai_cli::main_with_args`] with the process arguments.

use std::process::ExitCode;

/// The dataset writer thread frees the execution records that `execute` (a server worker
/// thread, under `loopai serve`) allocated; glibc's malloc takes an arena lock for each
/// such cross-thread free, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let code = loopai_cli::main_with_args(std::env::args_os());
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
