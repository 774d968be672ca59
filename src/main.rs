//! The `keybroker` binary: everything lives in the library; see `keybroker::cli`.

/// jemalloc, configured in `.cargo/config.toml`, returns memory freed after a burst of
/// connections to the kernel within about a second; glibc's arenas keep it (ARCHITECTURE.md,
/// "Memory").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    keybroker::cli::main()
}
