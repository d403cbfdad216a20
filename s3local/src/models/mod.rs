//! Realistic, deterministic model files: real safetensors files with generated tensors, and
//! ComfyUI-like trees of them.
//!
//! * [`SafetensorsSpec`] describes a file (seed, data size, metadata); [`Layout`] lays it
//!   out; [`SafetensorsReader`] produces it from any offset; [`write_safetensors`] writes it.
//! * [`parse_safetensors_header`] validates a header read back from somewhere.
//! * [`ComfyTree`] / [`seed_comfy_tree`] fill a bucket with a `checkpoints/`, `loras/`,
//!   `vae/`, … tree.

mod comfy;
mod dtype;
mod file;
mod header;
pub(crate) mod prng;
mod spec;

pub use comfy::{seed_comfy_tree, ComfyContent, ComfyEntry, ComfyTree};
pub use dtype::Dtype;
pub use file::{safetensors_len, write_safetensors, Layout, SafetensorsReader};
pub use header::{parse_safetensors_header, Header, SafetensorsError, TensorInfo};
pub use spec::{SafetensorsSpec, TensorSpec};

#[cfg(test)]
mod tests;
