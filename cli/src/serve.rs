//! `spate serve`: configuration (embedded default, then `--config`, then flags), start,
//! announce, wait for SIGTERM or SIGINT, shut down cleanly.

use std::io::Write;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use spate_engine::config::{EngineConfig, DEFAULT_CONFIG_TOML};
use spate_engine::server::Server;

use crate::args::ServeArgs;

/// The engine configuration `args` describe.
pub fn config(args: &ServeArgs) -> Result<EngineConfig, String> {
    let mut cfg = EngineConfig::from_toml(DEFAULT_CONFIG_TOML)
        .map_err(|e| format!("embedded default config: {e}"))?;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        cfg = EngineConfig::from_toml(&text)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
    }
    if let Some(dir) = &args.data_dir {
        cfg.data_dir = dir.clone();
    }
    if let Some(listen) = &args.listen {
        cfg.listen = listen.clone();
    }
    if let Some(cores) = &args.cores {
        cfg.cores = cores.0.clone();
    }
    if let Some(metrics) = &args.metrics_listen {
        cfg.metrics_listen = if metrics == "off" {
            String::new()
        } else {
            metrics.clone()
        };
    }
    if let Some(cert) = &args.tls_cert {
        cfg.tls_cert_file = Some(cert.clone());
    }
    if let Some(key) = &args.tls_key {
        cfg.tls_key_file = Some(key.clone());
    }
    if let Some(ca) = &args.client_ca {
        cfg.tls_client_ca_file = Some(ca.clone());
    }
    if args.tls_only {
        cfg.plaintext = false;
    }
    if let Some(auth) = args.auth {
        cfg.auth = auth == crate::args::OnOff::On;
    }
    if let Some(keys) = &args.key_file {
        cfg.key_file = Some(keys.clone());
    }
    cfg.validate()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    Ok(cfg)
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let cfg = config(&args)?;
    // A panic on any thread is a bug that leaves the engine unable to finish: a core that
    // died serves none of its shards and a shutdown would wait for it forever. End the
    // process at once instead (what follows is a restart's recovery, as after kill -9).
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    // Registered before the engine starts, so a signal during startup is not lost: it is
    // handled as soon as the server is up.
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // What the server writes — principals' keys (auth.bin), the catalog, the audit trail,
    // records of streams stored in the clear — is for its own user only.
    // SAFETY: umask only sets this process's file-mode mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let server = Server::start(cfg).map_err(|e| format!("cannot start: {e}"))?;
    let mut out = std::io::stdout().lock();
    let (tls, scheme) = if server.tls_enabled() {
        (" (tls)", "https")
    } else {
        ("", "http")
    };
    writeln!(out, "listening on {}{tls}", server.local_addr())
        .and_then(|()| match server.metrics_addr() {
            Some(m) => writeln!(out, "metrics on {scheme}://{m}/metrics"),
            None => Ok(()),
        })
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(out);
    if !server.config().auth {
        tracing::warn!(
            "authentication is off: anyone who can reach {} may read, write and delete every stream (start with --auth on to require principals; README: \"Running closed\")",
            server.local_addr()
        );
    }
    let signal = signals.forever().next();
    let name = match signal {
        Some(SIGTERM) => "SIGTERM",
        Some(SIGINT) => "SIGINT",
        _ => "the end of the signal stream",
    };
    tracing::info!(
        "shutting down on {name}: answering requests in flight, then a final checkpoint"
    );
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn serve_args(line: &str) -> ServeArgs {
        match Cli::try_parse_from(line.split_whitespace())
            .unwrap()
            .command
        {
            Command::Serve(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_override_the_configuration() {
        let cfg = config(&serve_args("spate serve")).unwrap();
        assert_eq!(cfg.key_file, None, "no master keys unless given");
        let cfg = config(&serve_args(
            "spate serve --key-file /etc/spate/master.keys --auth on",
        ))
        .unwrap();
        assert_eq!(
            cfg.key_file.as_deref(),
            Some(std::path::Path::new("/etc/spate/master.keys"))
        );
        assert!(cfg.auth);
    }
}
