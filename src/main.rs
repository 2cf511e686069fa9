//! The `dsfs` binary: parse the command line and run it.

/// The log filter when `RUST_LOG` is unset: warnings and errors, except fuser's warnings about
/// unmounting, which it prints at every clean unmount (its session tries a second unmount of a
/// mount that `dsfs umount` already removed, and reports EINVAL).
const DEFAULT_LOG_FILTER: &str = "warn,fuser::session=error,fuser::mnt=error";

/// The daemon's allocator. redb allocates and frees page-sized buffers in every transaction,
/// and glibc's malloc serves those from its shared bins (a profile of small-file creates spent
/// a tenth of the daemon's time in `_int_malloc`, `_int_free`, `unlink_chunk` and
/// `malloc_consolidate`); mimalloc keeps them in per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER))
        .init();
    dsfs::cli::main()
}
