//! Child process for tests that need the server in a process of its own (its memory
//! measured alone, its files closed by a real exit, or killed with SIGKILL):
//! `test_server DATA_DIR [TOML] [default]` starts a server on 127.0.0.1 port 0 with the test
//! configuration (or the embedded default one), overridden by the keys of TOML, prints
//! `LISTEN <public address>` and serves until its stdin closes, then shuts down cleanly.

use std::io::{Read, Write};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: test_server DATA_DIR [TOML]");
    let overrides = std::env::args().nth(2).unwrap_or_default();
    let base = if std::env::args().nth(3).as_deref() == Some("default") {
        spate_engine::config::EngineConfig {
            data_dir: dir.clone().into(),
            ..Default::default()
        }
    } else {
        spate_tests::test_config(std::path::Path::new(&dir))
    };
    let cfg = spate_tests::config_with(
        spate_engine::config::EngineConfig {
            listen: "127.0.0.1:0".into(),
            ..base
        },
        &overrides,
    );
    let server = spate_engine::server::Server::start(cfg).expect("server starts");
    let mut out = std::io::stdout();
    writeln!(out, "LISTEN {}", server.local_addr()).expect("stdout");
    out.flush().expect("stdout");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    server.shutdown();
}
