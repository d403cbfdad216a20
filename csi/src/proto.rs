//! The CSI v1 gRPC types, client and server traits generated from `csi/proto/csi.proto`
//! (the subset of the CSI v1.12 spec this plugin serves; package `csi.v1`).
//!
//! Exposed so that tests (and tools) can talk to the plugin with the same wire types a
//! kubelet uses; see [`crate::client::connect`].

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("csi.v1");
