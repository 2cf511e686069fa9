//! The `dsfs` binary: parse the command line and run it.

/// The log filter when `RUST_LOG` is unset: warnings and errors, except fuser's warnings about
/// unmounting, which it prints at every clean unmount (its session tries a second unmount of a
/// mount that `dsfs umount` already removed, and reports EINVAL).
const DEFAULT_LOG_FILTER: &str = "warn,fuser::session=error,fuser::mnt=error";

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER))
        .init();
    dsfs::cli::main()
}
