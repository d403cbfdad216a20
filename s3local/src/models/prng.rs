//! A counter-based pseudo-random byte stream: word `i` of stream `seed` is SplitMix64's
//! output for `seed + i·γ`, so any offset can be generated directly (no state to replay)
//! at several GB/s.

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `index` of stream `seed`.
#[inline]
fn word(seed: u64, index: u64) -> u64 {
    mix(seed.wrapping_add(index.wrapping_mul(GAMMA)))
}

/// Fills `out` with bytes `offset..offset + out.len()` of stream `seed`, each 8-byte word
/// (aligned to the stream start) ANDed with `mask`.
pub(crate) fn fill(seed: u64, mask: u64, offset: u64, mut out: &mut [u8]) {
    let mut index = offset / 8;
    let skip = (offset % 8) as usize;
    if skip != 0 {
        let bytes = (word(seed, index) & mask).to_le_bytes();
        let n = (8 - skip).min(out.len());
        out[..n].copy_from_slice(&bytes[skip..skip + n]);
        out = &mut out[n..];
        index += 1;
    }
    let mut chunks = out.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&(word(seed, index) & mask).to_le_bytes());
        index += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let bytes = (word(seed, index) & mask).to_le_bytes();
        let n = tail.len();
        tail.copy_from_slice(&bytes[..n]);
    }
}

/// A small sequential generator for planning (choices, not bulk bytes).
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// A number in `0..n` (`n > 0`; slightly biased, which is fine for planning).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_window_matches_the_whole_stream() {
        let mut whole = vec![0u8; 100];
        fill(7, u64::MAX, 0, &mut whole);
        for start in 0..20 {
            for len in [0, 1, 3, 8, 13, 40] {
                let mut part = vec![0u8; len];
                fill(7, u64::MAX, start as u64, &mut part);
                assert_eq!(part, &whole[start..start + len], "start {start} len {len}");
            }
        }
        let mut other = vec![0u8; 100];
        fill(8, u64::MAX, 0, &mut other);
        assert_ne!(whole, other, "seeds give different streams");
    }

    #[test]
    fn mask_applies_per_word() {
        let mut out = vec![0u8; 64];
        fill(1, 0x00FF_00FF_00FF_00FF, 0, &mut out);
        assert!(out.iter().skip(1).step_by(2).all(|&b| b == 0));
    }
}
