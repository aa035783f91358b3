//! Spate's end-to-end test binary (one binary, many modules, as the house style asks).

mod client;
mod crash;
mod disk;
mod encryption;
mod engine;
mod fanout;
mod hostile;
mod reshard;
mod security;
mod server;
mod soak;
mod tls;
