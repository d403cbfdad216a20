//! What a generated safetensors file contains: [`SafetensorsSpec`] and the plausible tensor
//! list ([`TensorSpec`]s) planned from it.

use super::dtype::Dtype;
use super::prng::Rng;

/// One tensor of a generated file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name (`model.diffusion_model.input_blocks.1.0.weight`, …).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// A tensor named `name`.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: &[u64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// Size of the tensor's data in bytes.
    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.dtype.size()
    }
}

/// A deterministic, generated safetensors file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SafetensorsSpec {
    /// Seed of the tensor list's variations and of the tensor bytes.
    pub seed: u64,
    /// Size of the data buffer (the file minus its header). The planned tensors add up to
    /// exactly this, so the file is `8 + header + total_bytes` bytes.
    pub total_bytes: u64,
    /// `__metadata__` entries, in order (omitted from the header when empty).
    pub metadata: Vec<(String, String)>,
}

impl SafetensorsSpec {
    /// A spec with `{"format": "pt"}` metadata.
    pub fn new(seed: u64, total_bytes: u64) -> SafetensorsSpec {
        SafetensorsSpec {
            seed,
            total_bytes,
            metadata: vec![("format".to_string(), "pt".to_string())],
        }
    }

    /// Adds a `__metadata__` entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// The planned tensors (in planning order; files store them sorted, see
    /// [`super::Layout`]): a UNet-like set of a few large convolution weights and many
    /// small biases and norms, in mixed dtypes, whose sizes add up to exactly `total_bytes`.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        plan(self.seed, self.total_bytes)
    }
}

/// Collects tensors against a byte budget.
struct Budget {
    remaining: u64,
    tensors: Vec<TensorSpec>,
}

impl Budget {
    /// Adds the tensor if it fits; says whether it did.
    fn push(&mut self, name: String, dtype: Dtype, shape: &[u64]) -> bool {
        let tensor = TensorSpec::new(name, dtype, shape);
        let len = tensor.byte_len();
        if len > self.remaining {
            return false;
        }
        self.remaining -= len;
        self.tensors.push(tensor);
        true
    }
}

/// UNet sections and their block counts.
const SECTIONS: [(&str, u64); 3] = [
    ("input_blocks", 12),
    ("middle_block", 3),
    ("output_blocks", 12),
];

/// Channel width of block `i` of `section`.
fn channels(section: &str, i: u64) -> u64 {
    let level = match section {
        "input_blocks" => i / 4,
        "middle_block" => 2,
        _ => 2 - (i / 4).min(2),
    };
    320 << level.min(2)
}

fn plan(seed: u64, total: u64) -> Vec<TensorSpec> {
    let mut rng = Rng::new(seed ^ 0x7365_6564_706c_616e);
    let mut budget = Budget {
        remaining: total,
        tensors: Vec::new(),
    };
    let text = "cond_stage_model.transformer.text_model";
    budget.push(
        format!("{text}.embeddings.position_ids"),
        Dtype::I64,
        &[1, 77],
    );
    budget.push("alphas_cumprod".into(), Dtype::F32, &[1000]);
    budget.push("model_ema.decay".into(), Dtype::F32, &[]);
    budget.push("model_ema.num_updates".into(), Dtype::I32, &[]);

    'blocks: for round in 0u64.. {
        for (section, count) in SECTIONS {
            for i in 0..count {
                for j in 0..2u64 {
                    let base = if round == 0 {
                        format!("model.diffusion_model.{section}.{i}.{j}")
                    } else {
                        format!("model.diffusion_model.extra_{round}.{section}.{i}.{j}")
                    };
                    let c = channels(section, i);
                    let dtype = if rng.below(4) == 0 {
                        Dtype::Bf16
                    } else {
                        Dtype::F16
                    };
                    let weight = format!("{base}.weight");
                    if !budget.push(weight.clone(), dtype, &[c, c, 3, 3])
                        && !budget.push(weight, dtype, &[c, c])
                    {
                        break 'blocks;
                    }
                    budget.push(format!("{base}.bias"), Dtype::F32, &[c]);
                    budget.push(format!("{base}.norm.weight"), Dtype::F32, &[c]);
                    budget.push(format!("{base}.norm.bias"), Dtype::F32, &[c]);
                    if rng.below(3) == 0 {
                        budget.push(
                            format!("{base}.emb_layers.1.weight"),
                            Dtype::F16,
                            &[c, 1280],
                        );
                    }
                    if rng.below(5) == 0 {
                        budget.push(format!("{base}.quant_map"), Dtype::U8, &[256]);
                    }
                }
            }
        }
    }
    // Whatever is left goes into one byte-typed tensor, so the data buffer is exactly `total`.
    let rest = budget.remaining;
    if rest > 0 {
        budget.push(
            "model.diffusion_model.out.2.quant_state".into(),
            Dtype::U8,
            &[rest],
        );
    }
    budget.tensors
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn plans_add_up_exactly_with_unique_names() {
        for total in [0, 1, 7, 100, 4096, 1 << 20, 50 << 20, 300 << 20] {
            let tensors = SafetensorsSpec::new(3, total).tensors();
            let sum: u64 = tensors.iter().map(TensorSpec::byte_len).sum();
            assert_eq!(sum, total, "total {total}");
            let names: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names.len(), tensors.len(), "names are unique");
        }
    }

    #[test]
    fn large_plans_look_like_a_model() {
        let tensors = SafetensorsSpec::new(1, 200 << 20).tensors();
        let big = tensors.iter().filter(|t| t.byte_len() >= 1 << 20).count();
        let small = tensors.iter().filter(|t| t.byte_len() < 64 << 10).count();
        assert!(big >= 5, "a few big tensors ({big})");
        assert!(small > 2 * big, "many small tensors ({small})");
        let dtypes: HashSet<Dtype> = tensors.iter().map(|t| t.dtype).collect();
        assert!(dtypes.len() >= 4, "mixed dtypes: {dtypes:?}");
    }

    #[test]
    fn plans_are_deterministic() {
        assert_eq!(
            SafetensorsSpec::new(5, 10 << 20).tensors(),
            SafetensorsSpec::new(5, 10 << 20).tensors()
        );
    }
}
