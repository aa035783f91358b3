//! `spate`: runs the engine (`serve`) and talks to a running one (`stream`, `put`, `read`),
//! with exactly the command line of SPEC §5.
//!
//! Output contract: results go to standard output in the documented line formats; logs go
//! to standard error (tracing, `RUST_LOG` filter, default `info` for `serve` and `warn`
//! otherwise). Exit status 0 on success; on failure, one line `spate: REASON` on standard
//! error and a non-zero status (2 for a command-line error, 1 otherwise). A reader of
//! standard output that goes away (`| head`) ends the command quietly with status 141.

mod args;
mod commands;
mod serve;
mod top;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::args::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `spate`, `spate stream`: what there is to run, in full (still a usage error).
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{e}").and_then(|()| err.flush());
            return ExitCode::from(2);
        }
        Err(e) if e.use_stderr() => {
            eprintln!("spate: {}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version; a reader that stops early (`spate --help | head`) is
            // not an error.
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{e}").and_then(|()| out.flush());
            return ExitCode::SUCCESS;
        }
    };
    if let Err(reason) = cli.check() {
        eprintln!("spate: {reason}");
        return ExitCode::from(2);
    }
    let serving = matches!(cli.command, Command::Serve(_));
    let server = cli.server();
    let tls = cli.tls();
    let creds = if serving { Ok(None) } else { cli.credentials() };
    let json = matches!(&cli.command, Command::Serve(s) if s.log_format == LogFormat::Json);
    init_logging(if serving { "info" } else { "warn" }, json);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Audit {
            command: args::AuditCommand::Verify { data_dir },
            ..
        } => commands::audit_verify(&data_dir),
        command => creds.and_then(|creds| commands::run(&server, tls, creds, command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("spate: {}", one_line(&reason));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // A log line that cannot be written (standard error closed: `spate serve 2>&1 | head`)
    // is dropped. Reporting it would write to the same closed stderr with `eprintln!`,
    // whose panic killed the core thread that logged and left the server hung.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// A message as one line: clap's multi-line errors lose their usage block, and the lines
/// before it are joined.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_become_one_line() {
        let clap_style = "error: the following required arguments were not provided:\n  --shards <N>\n\nUsage: spate stream create --shards <N> <NAME>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::one_line(clap_style),
            "the following required arguments were not provided: --shards <N>"
        );
        assert_eq!(super::one_line("plain"), "plain");
    }
}
