//! A ComfyUI-like models tree (`checkpoints/`, `loras/`, `vae/`, `controlnet/`,
//! `embeddings/`, `configs/`) of generated files, for the demo, tests and benchmarks.

use std::io;

use super::file::{safetensors_len, SafetensorsReader};
use super::prng::mix;
use super::spec::SafetensorsSpec;
use crate::store::{FileStore, ObjectMeta};

/// The checkpoint size at which the other files have their nominal sizes.
const NOMINAL_CHECKPOINT: u64 = 1 << 30;

/// Smallest data buffer of a scaled-down safetensors file.
const MIN_DATA: u64 = 1024;

const MIB: u64 = 1 << 20;

/// What one file of the tree holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComfyContent {
    /// A generated safetensors file.
    Safetensors(SafetensorsSpec),
    /// A small text file.
    Text(String),
}

impl ComfyContent {
    /// Size of the file in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ComfyContent::Safetensors(spec) => safetensors_len(spec),
            ComfyContent::Text(text) => text.len() as u64,
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One file of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComfyEntry {
    /// Full key (prefix included).
    pub key: String,
    /// Content.
    pub content: ComfyContent,
}

/// A ComfyUI-like models tree under a key prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComfyTree {
    /// The files, in a fixed order.
    pub entries: Vec<ComfyEntry>,
}

const V1_INFERENCE: &str = "\
model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    image_size: 64
    channels: 4
    scale_factor: 0.18215
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_heads: 8
        context_dim: 768
";

const V2_INFERENCE_V: &str = "\
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: \"v\"
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    image_size: 96
    channels: 4
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        model_channels: 320
        num_head_channels: 64
        context_dim: 1024
        use_linear_in_transformer: True
";

/// A seed derived from a key, so each file's content depends only on its name.
fn seed_of(key: &str) -> u64 {
    mix(key
        .bytes()
        .fold(0x006d_6f64_656c_6673_u64, |h, b| mix(h ^ u64::from(b))))
}

impl ComfyTree {
    /// The tree under `prefix` (empty, or a key prefix such as `models` or `models/`) with a
    /// checkpoint of about `checkpoint_bytes`. The other files have their nominal sizes
    /// (LoRAs 8–40 MiB, VAE 80 MiB, …) for a checkpoint of 1 GiB or more, and shrink in
    /// proportion below that (to at least 1 KiB of data each).
    pub fn new(prefix: &str, checkpoint_bytes: u64) -> ComfyTree {
        let prefix = match prefix {
            "" => String::new(),
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        };
        let scaled = |nominal: u64| -> u64 {
            let factor = checkpoint_bytes.min(NOMINAL_CHECKPOINT);
            let size = u128::from(nominal) * u128::from(factor) / u128::from(NOMINAL_CHECKPOINT);
            u64::try_from(size).unwrap_or(nominal).max(MIN_DATA)
        };
        let mut entries = Vec::new();
        let mut model = |path: &str, data: u64, extra: &[(&str, &str)]| {
            let key = format!("{prefix}{path}");
            let mut spec = SafetensorsSpec::new(seed_of(&key), data);
            for (k, v) in extra {
                spec = spec.with_metadata(*k, *v);
            }
            entries.push(ComfyEntry {
                key,
                content: ComfyContent::Safetensors(spec),
            });
        };
        let lora = [
            ("ss_network_module", "networks.lora"),
            ("ss_network_dim", "32"),
            ("ss_network_alpha", "16"),
        ];
        model(
            "checkpoints/sd15_base_demo.safetensors",
            checkpoint_bytes,
            &[
                ("modelspec.architecture", "stable-diffusion-v1"),
                ("modelspec.title", "modelfs demo checkpoint"),
            ],
        );
        model(
            "loras/detail_tweaker_demo.safetensors",
            scaled(8 * MIB),
            &lora,
        );
        model(
            "loras/film_grain_style.safetensors",
            scaled(18 * MIB),
            &lora,
        );
        model("loras/ink_lineart_xl.safetensors", scaled(40 * MIB), &lora);
        model("vae/vae_ft_mse_demo.safetensors", scaled(80 * MIB), &[]);
        model(
            "controlnet/control_canny_demo.safetensors",
            scaled(6 * MIB),
            &[("modelspec.architecture", "controlnet-v1")],
        );
        model("embeddings/easy_negative_demo.safetensors", 24 * 1024, &[]);
        for (path, text) in [
            ("configs/v1-inference.yaml", V1_INFERENCE),
            ("configs/v2-inference-v.yaml", V2_INFERENCE_V),
        ] {
            entries.push(ComfyEntry {
                key: format!("{prefix}{path}"),
                content: ComfyContent::Text(text.to_string()),
            });
        }
        ComfyTree { entries }
    }

    /// Total size of all files.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.content.len()).sum()
    }

    /// Writes every file into `bucket` (which must exist), streaming generated content
    /// straight into the store; returns the stored objects' metadata, in entry order.
    pub fn seed(&self, store: &FileStore, bucket: &str) -> io::Result<Vec<ObjectMeta>> {
        self.entries
            .iter()
            .map(|entry| {
                let stored = match &entry.content {
                    ComfyContent::Safetensors(spec) => {
                        store.put_from_reader(bucket, &entry.key, SafetensorsReader::new(spec))
                    }
                    ComfyContent::Text(text) => {
                        store.put_bytes(bucket, &entry.key, text.as_bytes())
                    }
                };
                stored.map_err(io::Error::from)
            })
            .collect()
    }
}

/// Fills `bucket` (which must exist) with a [`ComfyTree`] under `prefix`, with a checkpoint
/// of about `checkpoint_bytes`; returns the stored objects' metadata.
pub fn seed_comfy_tree(
    store: &FileStore,
    bucket: &str,
    prefix: &str,
    checkpoint_bytes: u64,
) -> io::Result<Vec<ObjectMeta>> {
    ComfyTree::new(prefix, checkpoint_bytes).seed(store, bucket)
}
