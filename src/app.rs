//! Dispatch from the parsed command line to the front-ends, and the one place where exit
//! codes are decided.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::client::exit;

/// Prints one `ERROR: ...` line on stderr. Unlike `eprintln!`, a closed or broken stderr
/// (EPIPE: the reader of `accio send ... 2>&1 | head` went away) does not panic: the exit
/// code still tells what happened.
macro_rules! error_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "ERROR: {}", format_args!($($arg)*));
    }};
}

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
            error_line!("no command given (usage: accio <send|serve|watch|status|retry|check-config|completions|man> ...; see accio --help)");
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            error_line!("{}", one_line_usage_error(&e));
            return ExitCode::from(exit::USAGE);
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
        Command::Send(_) | Command::Status(_) | Command::Retry(_) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        _ => {
            limit_malloc_arenas();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        }
    }
}

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
            error_line!("cannot start the async runtime: {e}");
            return exit::OTHER;
        }
    };
    match cli.command {
        Command::Send(args) => {
            let timeouts = args.timeouts.to_timeouts();
            match rt.block_on(crate::send::run(
                &args.host,
                &args.port,
                &args.file,
                args.confirm.into(),
                timeouts,
            )) {
                Ok(_) => exit::OK,
                Err(f) => {
                    error_line!("{}", f.message);
                    f.code
                }
            }
        }
        Command::Serve(args) => rt.block_on(serve(args)),
        Command::Watch(args) => crate::daemon::main(&rt, args),
        Command::CheckConfig(args) => crate::config::check_config_command(&args),
        Command::Status(args) => crate::ops::status_command(&args),
        Command::Retry(args) => crate::ops::retry::retry_command(&args),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "accio", &mut std::io::stdout());
            exit::OK
        }
        Command::Man { page } => man_page(page.as_deref()),
    }
}

/// Renders accio(1), accio-COMMAND(1) or accio.toml(5) to stdout.
fn man_page(page: Option<&str>) -> u8 {
    match crate::man::render(page, &mut std::io::stdout()) {
        Ok(()) => exit::OK,
        Err(crate::man::ManError::NoSuchPage(p)) => {
            error_line!("{}", crate::man::ManError::NoSuchPage(p));
            exit::USAGE
        }
        // `accio man | head`: the reader has what it wanted.
        Err(crate::man::ManError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            error_line!("cannot write the man page: {e}");
            exit::OTHER
        }
    }
}

async fn serve(args: crate::cli::ServeArgs) -> u8 {
    let port = match crate::client::parse_port(&args.port) {
        Ok(p) => p,
        Err(e) => {
            error_line!("{e}");
            return exit::USAGE;
        }
    };
    match std::fs::metadata(&args.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            error_line!("{:?} is not a directory", args.dir);
            return exit::USAGE;
        }
        Err(e) => {
            error_line!("cannot use directory {:?}: {e}", args.dir);
            return exit::USAGE;
        }
    }
    // Every connection writes a file here: refuse at start rather than fail each one.
    if let Err(e) = crate::serve::check_writable(&args.dir) {
        error_line!("cannot write to directory {:?}: {e}", args.dir);
        return exit::USAGE;
    }
    crate::logging::init_for_tool();
    let listener = match crate::serve::bind(port) {
        Ok(l) => l,
        Err(e) => {
            error_line!("cannot listen on port {port}: {e}");
            return exit::OTHER;
        }
    };
    let shutdown = match crate::signals::termination() {
        Ok(s) => s,
        Err(e) => {
            error_line!("cannot install signal handlers: {e}");
            return exit::OTHER;
        }
    };
    let opts = crate::serve::ServeOptions {
        dir: args.dir,
        idle_timeout: args.idle_timeout,
    };
    match crate::serve::run(listener, opts, shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => {
            error_line!("{e}");
            exit::OTHER
        }
    }
}
