//! Reading back a safetensors header: a small validator for tests that check what they read.

use std::ops::Range;

use serde_json::Value;

use super::dtype::Dtype;

/// Largest header accepted (the reference implementation's limit).
const MAX_HEADER: u64 = 100_000_000;

/// Why bytes are not a valid safetensors file (prefix).
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// Fewer bytes than the header needs.
    #[error("safetensors: need {needed} bytes for the header, have {have}")]
    TooShort {
        /// Bytes needed.
        needed: u64,
        /// Bytes given.
        have: u64,
    },
    /// The header length is implausible.
    #[error("safetensors: header length {0} exceeds the limit")]
    HeaderTooLarge(u64),
    /// The header is not JSON.
    #[error("safetensors: header is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The header is JSON but not a valid safetensors header.
    #[error("safetensors: invalid header: {0}")]
    Invalid(String),
}

/// One tensor entry of a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// `[begin, end)` of the tensor's bytes, relative to [`Header::data_start`].
    pub data_offsets: (u64, u64),
}

/// A parsed, validated safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Length of the JSON header (the first 8 bytes of the file).
    pub header_len: u64,
    /// Offset of the data buffer in the file (`8 + header_len`).
    pub data_start: u64,
    /// `__metadata__` entries (sorted by key).
    pub metadata: Vec<(String, String)>,
    /// Tensors, in data order.
    pub tensors: Vec<TensorInfo>,
}

impl Header {
    /// Size of the data buffer.
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.data_offsets.1)
    }

    /// Size of the whole file this header describes.
    pub fn file_len(&self) -> u64 {
        self.data_start + self.data_len()
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Where `tensor`'s bytes lie in the file: its `data_offsets` moved past the header.
    pub fn file_range(&self, tensor: &TensorInfo) -> Range<u64> {
        self.data_start + tensor.data_offsets.0..self.data_start + tensor.data_offsets.1
    }
}

fn invalid(msg: impl Into<String>) -> SafetensorsError {
    SafetensorsError::Invalid(msg.into())
}

fn parse_tensor(name: &str, value: &Value) -> Result<TensorInfo, SafetensorsError> {
    let dtype_name = value
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{name}: missing dtype")))?;
    let dtype = Dtype::from_name(dtype_name)
        .ok_or_else(|| invalid(format!("{name}: unknown dtype {dtype_name}")))?;
    let shape = value
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("{name}: missing shape")))?
        .iter()
        .map(Value::as_u64)
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| invalid(format!("{name}: shape is not a list of sizes")))?;
    let offsets = value
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|o| match o.as_slice() {
            [a, b] => Some((a.as_u64()?, b.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| invalid(format!("{name}: data_offsets is not [begin, end]")))?;
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid(format!("{name}: shape overflows")))?;
    let expected = elements
        .checked_mul(dtype.size())
        .ok_or_else(|| invalid(format!("{name}: size overflows")))?;
    if offsets.1 < offsets.0 || offsets.1 - offsets.0 != expected {
        return Err(invalid(format!(
            "{name}: data_offsets {offsets:?} do not hold {expected} bytes"
        )));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        data_offsets: offsets,
    })
}

/// Parses and validates the header at the start of `bytes` (which needs to hold at least
/// the 8-byte length and the JSON header, not the data): known dtypes, offsets matching
/// shapes, tensors covering the data buffer with no holes or overlaps.
pub fn parse_safetensors_header(bytes: &[u8]) -> Result<Header, SafetensorsError> {
    let have = bytes.len() as u64;
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(SafetensorsError::TooShort { needed: 8, have })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER {
        return Err(SafetensorsError::HeaderTooLarge(header_len));
    }
    let data_start = 8 + header_len;
    // Bounded by MAX_HEADER, so it fits a usize.
    let json = bytes
        .get(8..data_start as usize)
        .ok_or(SafetensorsError::TooShort {
            needed: data_start,
            have,
        })?;
    if json.first() != Some(&b'{') {
        return Err(invalid("the header does not start with '{'"));
    }
    let doc: Value = serde_json::from_slice(json)?;
    let object = doc
        .as_object()
        .ok_or_else(|| invalid("the header is not a JSON object"))?;

    let mut metadata = Vec::new();
    let mut tensors = Vec::new();
    for (name, value) in object {
        if name == "__metadata__" {
            let entries = value
                .as_object()
                .ok_or_else(|| invalid("__metadata__ is not an object"))?;
            for (k, v) in entries {
                let v = v
                    .as_str()
                    .ok_or_else(|| invalid(format!("__metadata__.{k} is not a string")))?;
                metadata.push((k.clone(), v.to_string()));
            }
        } else {
            tensors.push(parse_tensor(name, value)?);
        }
    }
    tensors.sort_by_key(|t| t.data_offsets);
    let mut end = 0;
    for t in &tensors {
        if t.data_offsets.0 != end {
            return Err(invalid(format!(
                "{}: starts at {} but the previous tensor ends at {end}",
                t.name, t.data_offsets.0
            )));
        }
        end = t.data_offsets.1;
    }
    Ok(Header {
        header_len,
        data_start,
        metadata,
        tensors,
    })
}
