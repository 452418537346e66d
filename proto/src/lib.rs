//! Protobuf messages and gRPC stubs of the `vmasim.v1` API.
//!
//! This crate is nothing but the wire contract: the `.proto` files under
//! `vmasim/v1/` and the Rust code that `build.rs` generates from them with
//! prost and tonic. The server and the client both depend on it, so they
//! cannot drift apart, and neither carries generated code of its own. As in
//! tokio-rs/mini-redis, the shared protocol lives in one small library and
//! everything with behaviour lives elsewhere: there are only types here,
//! and the few facts (names, bits) both sides must spell alike.
//!
//! The `.proto` files are the reference documentation: every field says its
//! unit, its valid range, what happens at the edges and which gRPC status an
//! invalid value gets. prost copies those comments onto the generated
//! fields, so they also show up in rustdoc.
//!
//! # Layout
//!
//! * `vmasim/v1/types.proto`: enums (`Prot`, `MapFlag`, `Access`,
//!   `FaultOutcome`, `FaultPath`) and shared messages (`FaultTotals`,
//!   `VmaEntry`).
//! * `vmasim/v1/race.proto`: the race lab messages.
//! * `vmasim/v1/address_space.proto`: the `AddressSpace` service and its
//!   requests and responses, including the `Session` stream.
//!
//! All three are one protobuf package, so everything is in [`v1`]:
//!
//! * client: [`v1::address_space_client::AddressSpaceClient`];
//! * server: [`v1::address_space_server::AddressSpace`] (the trait to
//!   implement) and [`v1::address_space_server::AddressSpaceServer`];
//! * oneofs: [`v1::session_request::Op`] and [`v1::session_reply::Result`].
//!
//! Beside the generated code, the facts both sides share, defined once:
//!
//! * [`METHODS`]: the RPCs of the service (checked against the descriptor),
//!   [`v1::session_request::Op::method`] and [`for_each_session_op!`];
//! * [`status::code_name`]: gRPC status names (`NOT_FOUND`);
//! * [`linux`]: `PROT_*`, `MAP_*`, `MREMAP_*` bits and their names, and the
//!   maps paths of the engine's own files.
//!
//! # Why it is built this way
//!
//! No `protoc` is installed on a fresh machine, and `cargo build` must still
//! work, so `build.rs` parses the `.proto` files with `protox` (pure Rust)
//! and hands the descriptors to `tonic-prost-build`. That path ignores
//! `file_descriptor_set_path`, so `build.rs` writes the descriptor set
//! itself; it is exported as [`FILE_DESCRIPTOR_SET`] for gRPC server
//! reflection.
//!
//! `prot` and `flags` are `uint32` bitmasks carrying Linux's x86-64 values;
//! the `Prot` and `MapFlag` enums only name the bits, so combine them with
//! `as u32` and `|`.
//!
//! # Example
//!
//! ```
//! use prost::Message;
//! use vmasim_proto::v1::{MapFlag, MmapRequest, Prot};
//!
//! let req = MmapRequest {
//!     pid: 1,
//!     addr: 0, // let the server choose
//!     length: 8192,
//!     prot: Prot::Read as u32 | Prot::Write as u32,
//!     flags: MapFlag::MapPrivate as u32 | MapFlag::MapAnonymous as u32,
//!     file_id: 0,
//!     offset: 0,
//!     file_size: 0,
//! };
//! assert_eq!(req.flags, 0x22); // MAP_PRIVATE | MAP_ANONYMOUS
//! let bytes = req.encode_to_vec();
//! assert_eq!(MmapRequest::decode(bytes.as_slice()).unwrap(), req);
//!
//! // The descriptor set (for reflection) describes the service.
//! let fds = prost_types::FileDescriptorSet::decode(vmasim_proto::FILE_DESCRIPTOR_SET).unwrap();
//! let has_service = fds.file.iter().any(|f| {
//!     f.package() == "vmasim.v1" && f.service.iter().any(|s| s.name() == "AddressSpace")
//! });
//! assert!(has_service, "vmasim.v1.AddressSpace is described");
//! ```

/// Generated code for protobuf package `vmasim.v1` (messages, enums, and
/// the `AddressSpace` client and server).
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links
)]
pub mod v1 {
    tonic::include_proto!("vmasim.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `vmasim.v1` file,
/// for `tonic-reflection`
/// (`Builder::configure().register_encoded_file_descriptor_set(..)`).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vmasim_descriptor");

pub mod linux;
mod methods;
pub mod status;

pub use methods::METHODS;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_has_every_rpc() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let service = fds
            .file
            .iter()
            .filter(|f| f.package() == "vmasim.v1")
            .flat_map(|f| f.service.iter())
            .find(|s| s.name() == "AddressSpace")
            .expect("service vmasim.v1.AddressSpace");
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        for rpc in METHODS {
            assert!(methods.contains(rpc), "missing rpc {rpc}: {methods:?}");
        }
        assert_eq!(methods.len(), METHODS.len(), "unexpected rpcs: {methods:?}");

        let session = service
            .method
            .iter()
            .find(|m| m.name() == "Session")
            .unwrap();
        assert!(session.client_streaming() && session.server_streaming());
    }

    #[test]
    fn bit_values_match_linux_x86_64() {
        use v1::{MapFlag, Prot};
        assert_eq!(Prot::None as u32, 0);
        assert_eq!(Prot::Read as u32, 1);
        assert_eq!(Prot::Write as u32, 2);
        assert_eq!(Prot::Exec as u32, 4);
        assert_eq!(MapFlag::MapShared as u32, 0x01);
        assert_eq!(MapFlag::MapPrivate as u32, 0x02);
        assert_eq!(MapFlag::MapFixed as u32, 0x10);
        assert_eq!(MapFlag::MapAnonymous as u32, 0x20);
        assert_eq!(MapFlag::MapFixedNoreplace as u32, 0x10_0000);
    }
}
