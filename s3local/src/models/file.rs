//! Laying out and producing a safetensors file: 8-byte little-endian header length, the JSON
//! header (padded with spaces to a multiple of 8), then the tensors' data back to back.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::prng::{self, mix};
use super::spec::{SafetensorsSpec, TensorSpec};

/// Bytes generated per write by [`write_safetensors`].
const WRITE_CHUNK: usize = 1 << 20;

/// Where one tensor's data lies, relative to the start of the data buffer.
#[derive(Clone, Debug)]
struct Placed {
    tensor: TensorSpec,
    begin: u64,
    end: u64,
    seed: u64,
}

/// A laid-out safetensors file: its header bytes and the position of each tensor.
#[derive(Clone, Debug)]
pub struct Layout {
    head: Vec<u8>,
    tensors: Vec<Placed>,
}

/// FNV-1a, to derive a tensor's seed from its name.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

impl Layout {
    /// The layout of the file described by `spec`.
    pub fn new(spec: &SafetensorsSpec) -> Layout {
        Layout::with_tensors(spec.seed, &spec.metadata, spec.tensors())
    }

    /// The layout of a file holding `tensors` (names must be unique), with `metadata`, and
    /// data generated from `seed`. Tensors are stored like the reference writer stores
    /// them: by descending dtype, then by name.
    pub fn with_tensors(
        seed: u64,
        metadata: &[(String, String)],
        mut tensors: Vec<TensorSpec>,
    ) -> Layout {
        tensors.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
        let mut offset = 0;
        let placed: Vec<Placed> = tensors
            .into_iter()
            .map(|tensor| {
                let begin = offset;
                offset += tensor.byte_len();
                Placed {
                    seed: mix(seed ^ mix(fnv1a(&tensor.name))),
                    tensor,
                    begin,
                    end: offset,
                }
            })
            .collect();

        let mut entries = Vec::with_capacity(placed.len() + 1);
        if !metadata.is_empty() {
            let fields: Vec<String> = metadata
                .iter()
                .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
                .collect();
            entries.push(format!("\"__metadata__\":{{{}}}", fields.join(",")));
        }
        for p in &placed {
            let shape: Vec<String> = p.tensor.shape.iter().map(u64::to_string).collect();
            entries.push(format!(
                "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                json_string(&p.tensor.name),
                p.tensor.dtype.name(),
                shape.join(","),
                p.begin,
                p.end
            ));
        }
        let mut json = format!("{{{}}}", entries.join(",")).into_bytes();
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut head = Vec::with_capacity(8 + json.len());
        head.extend_from_slice(&(json.len() as u64).to_le_bytes());
        head.extend_from_slice(&json);
        Layout {
            head,
            tensors: placed,
        }
    }

    /// Length of the JSON header (a multiple of 8).
    pub fn header_len(&self) -> u64 {
        self.head.len() as u64 - 8
    }

    /// Offset of the data buffer in the file.
    pub fn data_start(&self) -> u64 {
        self.head.len() as u64
    }

    /// Size of the data buffer.
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |p| p.end)
    }

    /// Size of the whole file.
    pub fn file_len(&self) -> u64 {
        self.data_start() + self.data_len()
    }

    /// The tensors in file order, each with its data offsets.
    pub fn tensors(&self) -> impl Iterator<Item = (&TensorSpec, (u64, u64))> {
        self.tensors.iter().map(|p| (&p.tensor, (p.begin, p.end)))
    }

    /// A reader producing the file.
    pub fn into_reader(self) -> SafetensorsReader {
        SafetensorsReader {
            layout: self,
            pos: 0,
            cursor: 0,
        }
    }
}

/// Produces a generated safetensors file on the fly (nothing is held in memory beyond the
/// header), from any position: implements [`Read`] and [`Seek`].
#[derive(Clone, Debug)]
pub struct SafetensorsReader {
    layout: Layout,
    pos: u64,
    /// Index of the first tensor that ends after the current data position.
    cursor: usize,
}

impl SafetensorsReader {
    /// A reader of the file described by `spec`.
    pub fn new(spec: &SafetensorsSpec) -> SafetensorsReader {
        Layout::new(spec).into_reader()
    }

    /// The layout being produced.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Fills `out` from data position `data_pos` onwards, within one tensor; returns the
    /// number of bytes produced (0 at the end of the data).
    fn fill_data(&mut self, data_pos: u64, out: &mut [u8]) -> usize {
        let tensors = &self.layout.tensors;
        while self.cursor < tensors.len() && tensors[self.cursor].end <= data_pos {
            self.cursor += 1;
        }
        let Some(tensor) = tensors.get(self.cursor) else {
            return 0;
        };
        let available = tensor.end - data_pos;
        let n = usize::try_from(available).map_or(out.len(), |a| a.min(out.len()));
        prng::fill(
            tensor.seed,
            tensor.tensor.dtype.word_mask(),
            data_pos - tensor.begin,
            &mut out[..n],
        );
        n
    }
}

impl Read for SafetensorsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let head_len = self.layout.head.len() as u64;
        let mut written = 0;
        if self.pos < head_len {
            // Bounded by the header's length, which is a usize.
            let start = self.pos as usize;
            let n = (self.layout.head.len() - start).min(buf.len());
            buf[..n].copy_from_slice(&self.layout.head[start..start + n]);
            written = n;
            self.pos += n as u64;
        }
        while written < buf.len() {
            let n = self.fill_data(self.pos - head_len, &mut buf[written..]);
            if n == 0 {
                break;
            }
            written += n;
            self.pos += n as u64;
        }
        Ok(written)
    }
}

impl Seek for SafetensorsReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.layout.file_len();
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        self.pos = target;
        let data_pos = target.saturating_sub(self.layout.data_start());
        self.cursor = self.layout.tensors.partition_point(|p| p.end <= data_pos);
        Ok(target)
    }
}

/// Writes the safetensors file described by `spec` to `w`; returns its length.
///
/// The file is real: `8`-byte LE header length, JSON header (`__metadata__` first, tensors
/// sorted by descending dtype then name, contiguous `data_offsets`), padded with spaces to
/// a multiple of 8, then pseudo-random data (finite values for float dtypes) that depends
/// only on the spec.
pub fn write_safetensors(mut w: impl Write, spec: &SafetensorsSpec) -> io::Result<u64> {
    let mut reader = SafetensorsReader::new(spec);
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Length of the file [`write_safetensors`] writes for `spec`, without generating it.
pub fn safetensors_len(spec: &SafetensorsSpec) -> u64 {
    Layout::new(spec).file_len()
}
