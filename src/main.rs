//! The `dsfs` binary: parse the command line and run it.

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    dsfs::cli::main()
}
