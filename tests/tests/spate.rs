//! Spate's end-to-end test binary (one binary, many modules, as the house style asks).

mod crash;
mod engine;
mod server;
