//! The `keybroker` binary: everything lives in the library; see `keybroker::cli`.

fn main() -> std::process::ExitCode {
    keybroker::cli::main()
}
