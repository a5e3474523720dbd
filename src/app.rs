//! Dispatch from the parsed command line to the front-ends; [`crate::exit`] turns what
//! they return into the exit code.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::exit::{self, error_line, Failed, Kind};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    main_with_args(std::env::args_os())
}

/// Parses `args` and runs the command. Usage errors print one `ERROR:` line and exit 2;
/// `--help` and `--version` print as usual and exit 0.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version: not errors.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return ExitCode::from(exit::finish::<()>(Err(Failed::new(
                Kind::Usage,
                "no command given (usage: accio <send|serve|watch|status|flush|retry|check-config|completions|man> ...; see accio --help)",
            ))));
        }
        Err(e) => {
            return ExitCode::from(exit::finish::<()>(Err(Failed::new(
                Kind::Usage,
                one_line_usage_error(&e),
            ))));
        }
    };
    ExitCode::from(run(cli))
}

/// Turns clap's multi-line error into one line: its message (with any indented detail
/// lines it lists) plus the usage.
fn one_line_usage_error(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut parts = Vec::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
            break;
        }
        if line.starts_with("tip:") || line.starts_with("For more information") {
            continue;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
    }
    let mut message = parts.join(" ");
    if message.is_empty() {
        message = "invalid arguments".to_string();
    }
    match usage {
        Some(u) => format!("{message} (usage: {u})"),
        None => message,
    }
}

/// The async runtime for a command. `send` does one transfer on one socket: a single-thread
/// runtime does it as fast and saves starting worker threads, which is most of the cost of
/// sending a small file (see README, "Performance: send").
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        // `status` and `retry` are blocking tools; the runtime is only there to be uniform.
        Command::Send(_) | Command::Status(_) | Command::Flush(_) | Command::Retry(_) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        _ => {
            limit_malloc_arenas();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                // The service's blocking work here (lstat batches, listings, directory
                // syncs; claims and moves have each watch's own threads, watch::lane) is
                // short system calls: tokio's default of 512 threads only costs memory (a
                // 100k backlog grew 190 threads, about 8 MiB), and a hung spool is held to
                // its own lane's uploads and one lstat batch either way.
                .max_blocking_threads(BLOCKING_THREADS)
                .enable_all()
                .build()
        }
    }
}

/// Threads for blocking filesystem work in `watch` and `serve`.
const BLOCKING_THREADS: usize = 32;

/// glibc gives threads malloc arenas of their own (up to 8 per core), each keeping its high
/// water mark: the service's listings of a large backlog, built on blocking threads and freed
/// on the queue's, would leave memory in every arena they passed through. Two arenas keep
/// the service's memory to what it holds (a million waiting files: under 64 MiB). Set before
/// any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Runs a parsed command; returns the exit code.
pub fn run(cli: Cli) -> u8 {
    let rt = match runtime(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            error_line(format!("cannot start the async runtime: {e}"));
            return Kind::Other.code();
        }
    };
    let outcome = match cli.command {
        Command::Send(args) => {
            let timeouts = args.timeouts.to_timeouts();
            rt.block_on(crate::send::run(
                &args.host,
                &args.port,
                &args.file,
                args.confirm.into(),
                args.limit_rate.and_then(|r| r.0),
                timeouts,
            ))
            .map(drop)
        }
        Command::Serve(args) => rt.block_on(crate::serve::command(crate::serve::Command {
            port: args.port,
            dir: args.dir,
            listen: args.listen,
            idle_timeout: args.idle_timeout,
            no_sync: args.no_sync,
            max_connections: args.max_connections,
            max_per_address: args.max_per_address,
            max_size: args.max_size,
            deadline: args.deadline,
            mode: args.mode,
        })),
        Command::Watch(args) => crate::daemon::main(&rt, args.config, args.log_format.into()),
        Command::CheckConfig(args) => crate::ops::check_config_command(&args.config, args.quiet),
        Command::Status(args) => crate::ops::status_command(
            &args.socket.socket_from(),
            args.json,
            crate::status::ViewQuery {
                all: args.all,
                destination: args.destination,
            },
        ),
        Command::Flush(args) => {
            crate::ops::flush_command(&args.socket.socket_from(), args.destination.as_deref())
        }
        Command::Retry(args) => crate::ops::retry::retry_command(
            &args.config,
            args.watch.as_deref(),
            &args.names,
            crate::ops::retry::Mode::of(args.list, args.dry_run),
        ),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "accio", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { page } => man_page(page.as_deref()),
    };
    // Blocking work still running (an `lstat` on a hung network filesystem, a read of a file
    // being uploaded) must not keep the process from exiting once the command has decided:
    // dropping the runtime would wait for it without limit.
    rt.shutdown_timeout(BLOCKING_GRACE);
    exit::finish(outcome)
}

/// How long a finished command waits for its blocking threads before it exits without them.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Renders accio(1), accio-COMMAND(1) or accio.toml(5) to stdout.
fn man_page(page: Option<&str>) -> Result<(), Failed> {
    match crate::man::render(page, &mut std::io::stdout()) {
        Ok(()) => Ok(()),
        Err(e @ crate::man::ManError::NoSuchPage(_)) => Err(Failed::new(Kind::Usage, e)),
        // `accio man | head`: the reader has what it wanted.
        Err(crate::man::ManError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failed::new(
            Kind::Other,
            format!("cannot write the man page: {e}"),
        )),
    }
}
