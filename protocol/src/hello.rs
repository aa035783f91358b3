//! Hello: the first exchange on a connection. The server answers with its protocol version,
//! its maximum frame size and every engine core with the address a client can reach it at,
//! so a shard-aware client (knowing each shard's core from describe-stream) connects
//! straight to the core that owns a shard and skips the cross-core hop.
//!
//! ```text
//! request:   client_name       str (at most MAX_CLIENT_NAME_BYTES; for the server's logs)
//! response:  protocol_version  u8
//!            max_frame_bytes   u32
//!            core_count        varint (at most MAX_CORES)
//!            core_count × { core_id u16, address str ("host:port", at most MAX_ADDRESS_BYTES) }
//!            metrics_address   opt<str> (where `GET /metrics` is answered, if anywhere)
//!            auth_required     bool (requests other than Hello and authentication need an
//!                              authenticated connection)
//!            principal         opt<str> (the principal the connection is authenticated as
//!                              already: by its TLS client certificate)
//! ```

use crate::message::Payload;
use crate::wire::{
    put_bool, put_count, put_option, put_str, put_u16, put_u32, put_u8, DecodeError, Reader,
};

/// Longest client name a hello may carry.
pub const MAX_CLIENT_NAME_BYTES: usize = 128;
/// Longest advertised core address ("host:port"; a DNS name is at most 253 bytes).
pub const MAX_ADDRESS_BYTES: usize = 255;
/// Most cores a hello response may list.
pub const MAX_CORES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloRequest<'a> {
    pub client_name: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloResponse<'a> {
    pub protocol_version: u8,
    /// The largest frame the server accepts; the client keeps its requests within it.
    pub max_frame_bytes: u32,
    pub cores: Vec<CoreInfo<'a>>,
    /// "host:port" of the server's metrics endpoint (Prometheus text over HTTP), if on.
    pub metrics_address: Option<&'a str>,
    /// Whether the server answers only authenticated connections.
    pub auth_required: bool,
    /// Who the connection is authenticated as already (a TLS client certificate).
    pub principal: Option<&'a str>,
}

/// One engine core and where to connect to reach it directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreInfo<'a> {
    pub core_id: u16,
    /// "host:port" as advertised by the server (not resolved here).
    pub address: &'a str,
}

impl<'a> HelloResponse<'a> {
    /// The advertised address of `core_id`, if the server has such a core.
    pub fn address_of(&self, core_id: u16) -> Option<&'a str> {
        self.cores
            .iter()
            .find(|c| c.core_id == core_id)
            .map(|c| c.address)
    }
}

impl<'a> Payload<'a> for HelloRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.client_name);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(HelloRequest {
            client_name: r.str(MAX_CLIENT_NAME_BYTES, "client_name")?,
        })
    }
}

/// Smallest encoded core entry: core_id and a one-byte address length.
const MIN_CORE_BYTES: usize = 3;

impl<'a> Payload<'a> for HelloResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u8(out, self.protocol_version);
        put_u32(out, self.max_frame_bytes);
        put_count(out, self.cores.len());
        for core in &self.cores {
            put_u16(out, core.core_id);
            put_str(out, core.address);
        }
        put_option(out, self.metrics_address, put_str);
        put_bool(out, self.auth_required);
        put_option(out, self.principal, put_str);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let protocol_version = r.u8("protocol_version")?;
        let max_frame_bytes = r.u32("max_frame_bytes")?;
        let count = r.count(MAX_CORES, MIN_CORE_BYTES, "cores")?;
        let mut cores = Vec::new();
        for _ in 0..count {
            let core_id = r.u16("core_id")?;
            let address = r.str(MAX_ADDRESS_BYTES, "address")?;
            if address.is_empty() {
                return Err(DecodeError::Malformed {
                    field: "address",
                    reason: "empty",
                });
            }
            cores.push(CoreInfo { core_id, address });
        }
        let metrics_address = if r.present("metrics_address")? {
            Some(r.str(MAX_ADDRESS_BYTES, "metrics_address")?)
        } else {
            None
        };
        let auth_required = r.bool("auth_required")?;
        let principal = if r.present("principal")? {
            Some(r.str(crate::auth::MAX_PRINCIPAL_NAME_BYTES, "principal")?)
        } else {
            None
        };
        Ok(HelloResponse {
            protocol_version,
            max_frame_bytes,
            cores,
            metrics_address,
            auth_required,
            principal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PROTOCOL_VERSION;
    use crate::message::testkit::{check_request, check_response};
    use crate::message::{Request, Response};
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_truncations() {
        check_request(&Request::Hello(HelloRequest { client_name: "" }));
        check_request(&Request::Hello(HelloRequest {
            client_name: "spate-cli/0.1",
        }));
        check_response(&Response::Hello(HelloResponse {
            protocol_version: PROTOCOL_VERSION,
            max_frame_bytes: 1 << 20,
            cores: vec![],
            metrics_address: None,
            auth_required: true,
            principal: Some("svc@eu"),
        }));
        let hello = HelloResponse {
            protocol_version: PROTOCOL_VERSION,
            max_frame_bytes: crate::frame::DEFAULT_MAX_FRAME_BYTES as u32,
            cores: vec![
                CoreInfo {
                    core_id: 0,
                    address: "10.0.0.1:7000",
                },
                CoreInfo {
                    core_id: 5,
                    address: "[::1]:7005",
                },
            ],
            metrics_address: Some("10.0.0.1:7480"),
            auth_required: false,
            principal: None,
        };
        assert_eq!(hello.address_of(5), Some("[::1]:7005"));
        assert_eq!(hello.address_of(1), None);
        check_response(&Response::Hello(hello));
    }

    #[test]
    fn golden_hello_response() {
        let out = check_response(&Response::Hello(HelloResponse {
            protocol_version: 1,
            max_frame_bytes: 256,
            cores: vec![CoreInfo {
                core_id: 2,
                address: "h:1",
            }],
            metrics_address: Some("h:9"),
            auth_required: true,
            principal: Some("p"),
        }));
        #[rustfmt::skip]
        let expected = [
            37, 0, 0, 0,  1,  1,  1, 0,  42, 0, 0, 0, 0, 0, 0, 0,
            1,                          // protocol_version
            0, 1, 0, 0,                 // max_frame_bytes
            1,  2, 0,  3, b'h', b':', b'1', // one core: id 2, "h:1"
            1,  3, b'h', b':', b'9',    // metrics_address: present, "h:9"
            1,                          // auth_required
            1,  1, b'p',                // principal: present, "p"
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn golden_hello_request() {
        let out = check_request(&Request::Hello(HelloRequest { client_name: "c" }));
        #[rustfmt::skip]
        let expected = [
            18, 0, 0, 0,  1,  0,  1, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b'c',
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn bounds_are_enforced() {
        let long = "x".repeat(MAX_CLIENT_NAME_BYTES + 1);
        let mut payload = Vec::new();
        HelloRequest { client_name: &long }.encode_payload(&mut payload);
        assert!(matches!(
            Request::decode(1, &payload),
            Err(DecodeError::Invalid {
                field: "client_name",
                ..
            })
        ));
        let empty_address = HelloResponse {
            protocol_version: 1,
            max_frame_bytes: 0,
            cores: vec![CoreInfo {
                core_id: 0,
                address: "",
            }],
            metrics_address: None,
            auth_required: false,
            principal: None,
        };
        let mut payload = Vec::new();
        empty_address.encode_payload(&mut payload);
        assert!(Response::decode(1, &payload).is_err());
    }

    proptest! {
        #[test]
        fn hello_response_round_trips(
            version: u8,
            max_frame_bytes: u32,
            cores in proptest::collection::vec((any::<u16>(), "[a-z0-9.:]{1,40}"), 0..20),
            metrics in proptest::option::of("[a-z0-9.:]{1,40}"),
            auth_required: bool,
            principal in proptest::option::of("[a-z0-9.@_-]{1,40}"),
        ) {
            let hello = HelloResponse {
                protocol_version: version,
                max_frame_bytes,
                cores: cores.iter().map(|(id, a)| CoreInfo { core_id: *id, address: a }).collect(),
                metrics_address: metrics.as_deref(),
                auth_required,
                principal: principal.as_deref(),
            };
            check_response(&Response::Hello(hello));
        }
    }
}
