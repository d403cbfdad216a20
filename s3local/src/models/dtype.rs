//! Safetensors element types.

/// A safetensors dtype. The declaration order is the reference implementation's, which
/// orders tensors in a file by descending dtype (so every tensor starts aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dtype {
    /// `BOOL`, 1 byte.
    Bool,
    /// `U8`.
    U8,
    /// `I8`.
    I8,
    /// `F8_E5M2`.
    F8E5M2,
    /// `F8_E4M3`.
    F8E4M3,
    /// `I16`.
    I16,
    /// `U16`.
    U16,
    /// `F16`, IEEE half precision.
    F16,
    /// `BF16`, bfloat16.
    Bf16,
    /// `I32`.
    I32,
    /// `U32`.
    U32,
    /// `F32`.
    F32,
    /// `F64`.
    F64,
    /// `I64`.
    I64,
    /// `U64`.
    U64,
}

impl Dtype {
    /// Every dtype, in declaration order.
    pub const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The name used in safetensors headers (`"F16"`, `"BF16"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// The dtype with header name `name`.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Mask applied to each generated 64-bit word so that floating-point elements are finite
    /// values in (-2, 2) (the top exponent bit is cleared); integers are left as they are.
    pub(crate) fn word_mask(self) -> u64 {
        match self {
            Dtype::F16 | Dtype::Bf16 => !0x4000_4000_4000_4000,
            Dtype::F32 => !0x4000_0000_4000_0000,
            Dtype::F64 => !(1 << 62),
            _ => u64::MAX,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for dtype in Dtype::ALL {
            assert_eq!(Dtype::from_name(dtype.name()), Some(dtype));
        }
        assert_eq!(Dtype::from_name("F128"), None);
    }

    #[test]
    fn masked_floats_are_finite() {
        // The mask itself is the largest word a masked stream can produce.
        let word = Dtype::F16.word_mask();
        for half in word.to_le_bytes().chunks(2) {
            let bits = u16::from_le_bytes([half[0], half[1]]);
            assert_ne!((bits >> 10) & 0x1f, 0x1f, "F16 exponent is not all ones");
        }
        let word = Dtype::F32.word_mask();
        let value = f32::from_bits((word & 0xffff_ffff) as u32);
        assert!(value.is_finite() && value.abs() < 2.0);
        let value = f64::from_bits(Dtype::F64.word_mask());
        assert!(value.is_finite() && value.abs() < 2.0);
    }
}
