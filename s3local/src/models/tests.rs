use std::io::{Read, Seek, SeekFrom};

use super::*;

fn generate(spec: &SafetensorsSpec) -> Vec<u8> {
    let mut out = Vec::new();
    let written = write_safetensors(&mut out, spec).expect("write");
    assert_eq!(written, out.len() as u64);
    out
}

#[test]
fn generated_file_is_valid_safetensors() {
    let spec = SafetensorsSpec::new(42, 3 << 20).with_metadata("modelspec.title", "t \"q\"");
    let bytes = generate(&spec);
    assert_eq!(bytes.len() as u64, safetensors_len(&spec));

    let header = parse_safetensors_header(&bytes).expect("parse");
    assert_eq!(header.header_len % 8, 0, "header padded to 8 bytes");
    assert_eq!(
        header.data_len(),
        3 << 20,
        "data buffer has the requested size"
    );
    assert_eq!(header.file_len(), bytes.len() as u64);
    assert!(header
        .metadata
        .contains(&("format".to_string(), "pt".to_string())));
    assert!(header
        .metadata
        .contains(&("modelspec.title".to_string(), "t \"q\"".to_string())));

    // The header lists exactly the planned tensors.
    let mut planned: Vec<String> = spec.tensors().into_iter().map(|t| t.name).collect();
    let mut listed: Vec<String> = header.tensors.iter().map(|t| t.name.clone()).collect();
    planned.sort();
    listed.sort();
    assert_eq!(planned, listed);

    // Stored by descending dtype, then name; each tensor aligned to its element size.
    for pair in header.tensors.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a.dtype > b.dtype || (a.dtype == b.dtype && a.name < b.name),
            "{} before {}",
            a.name,
            b.name
        );
    }
    for t in &header.tensors {
        assert_eq!(t.data_offsets.0 % t.dtype.size(), 0, "{} aligned", t.name);
    }
    // The JSON is padded with spaces after the closing brace.
    let json = &bytes[8..header.data_start as usize];
    let trimmed = json.trim_ascii_end();
    assert_eq!(trimmed.last(), Some(&b'}'));
    assert!(json.len() - trimmed.len() < 8);
}

#[test]
fn float_tensors_hold_finite_values() {
    let spec = SafetensorsSpec::new(9, 2 << 20);
    let bytes = generate(&spec);
    let header = parse_safetensors_header(&bytes).expect("parse");
    let mut checked = 0;
    for t in header.tensors.iter().filter(|t| t.dtype == Dtype::F32) {
        let range = header.file_range(t);
        let data = &bytes[range.start as usize..range.end as usize];
        for chunk in data.chunks_exact(4) {
            let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            assert!(v.is_finite() && v.abs() < 2.0);
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn generation_is_deterministic_and_seeded() {
    let spec = SafetensorsSpec::new(1, 1 << 20);
    assert_eq!(generate(&spec), generate(&spec));
    let other = generate(&SafetensorsSpec::new(2, 1 << 20));
    assert_ne!(generate(&spec), other);
}

#[test]
fn reader_seeks_anywhere() {
    let spec = SafetensorsSpec::new(3, 700_001);
    let whole = generate(&spec);
    let mut reader = SafetensorsReader::new(&spec);
    for &(offset, len) in &[
        (0u64, 10usize),
        (5, 3000),
        (100_000, 77_777),
        (whole.len() as u64 - 5, 5),
    ] {
        reader.seek(SeekFrom::Start(offset)).expect("seek");
        let mut buf = vec![0u8; len];
        reader.read_exact(&mut buf).expect("read");
        assert_eq!(
            buf,
            &whole[offset as usize..offset as usize + len],
            "offset {offset}"
        );
    }
    reader.seek(SeekFrom::End(0)).expect("seek");
    assert_eq!(reader.read(&mut [0u8; 4]).expect("read"), 0);
}

#[test]
fn tiny_and_empty_specs() {
    for total in [0u64, 1, 9] {
        let spec = SafetensorsSpec {
            metadata: Vec::new(),
            ..SafetensorsSpec::new(0, total)
        };
        let bytes = generate(&spec);
        let header = parse_safetensors_header(&bytes).expect("parse");
        assert_eq!(header.data_len(), total);
        assert!(header.metadata.is_empty());
    }
}

#[test]
fn header_validation() {
    let good = generate(&SafetensorsSpec::new(0, 4096));
    let header = parse_safetensors_header(&good).expect("parse");
    // Only the header is needed.
    let prefix = &good[..header.data_start as usize];
    assert_eq!(
        parse_safetensors_header(prefix).expect("parse prefix"),
        header
    );
    assert!(matches!(
        parse_safetensors_header(&good[..header.data_start as usize - 1]),
        Err(SafetensorsError::TooShort { .. })
    ));
    assert!(parse_safetensors_header(&good[..4]).is_err());

    let file = |json: &str| {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out
    };
    let ok = r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[],"data_offsets":[4,5]}}"#;
    let header = parse_safetensors_header(&file(ok)).expect("ok");
    assert_eq!(header.data_len(), 5);
    let data_start = 8 + ok.len() as u64;
    let b = header.tensor("b").expect("b");
    assert_eq!(header.file_range(b), data_start + 4..data_start + 5);
    for bad in [
        r#"[]"#,
        r#"{"a":{"dtype":"F99","shape":[2],"data_offsets":[0,4]}}"#,
        r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#,
        r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[2,6]}}"#,
        r#"{"__metadata__":{"x":1}}"#,
        "not json",
    ] {
        assert!(parse_safetensors_header(&file(bad)).is_err(), "{bad}");
    }
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.push(b'{');
    assert!(matches!(
        parse_safetensors_header(&huge),
        Err(SafetensorsError::HeaderTooLarge(_))
    ));
}

#[test]
fn comfy_tree_seeds_a_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = crate::FileStore::open(dir.path()).expect("open");
    store.create_bucket("models").expect("bucket");
    let checkpoint = 4 << 20;
    let tree = ComfyTree::new("comfy", checkpoint);
    let stored = seed_comfy_tree(&store, "models", "comfy", checkpoint).expect("seed");
    assert_eq!(stored.len(), tree.entries.len());
    let total: u64 = stored.iter().map(|m| m.size).sum();
    assert_eq!(total, tree.total_bytes());

    let keys: Vec<&str> = stored.iter().map(|m| m.key.as_str()).collect();
    for dir in [
        "checkpoints/",
        "loras/",
        "vae/",
        "controlnet/",
        "embeddings/",
        "configs/",
    ] {
        assert!(
            keys.iter().any(|k| k.starts_with(&format!("comfy/{dir}"))),
            "{dir}"
        );
    }
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("comfy/loras/"))
            .count(),
        3
    );

    for (entry, meta) in tree.entries.iter().zip(&stored) {
        assert_eq!(entry.key, meta.key);
        assert_eq!(entry.content.len(), meta.size);
        if let ComfyContent::Safetensors(spec) = &entry.content {
            let bytes = store.get_bytes("models", &meta.key).expect("get");
            let header = parse_safetensors_header(&bytes).expect("valid safetensors");
            assert_eq!(header.data_len(), spec.total_bytes);
        }
    }
    let checkpoint_meta = &stored[0];
    assert!(checkpoint_meta.key.starts_with("comfy/checkpoints/"));
    assert!(checkpoint_meta.size > checkpoint && checkpoint_meta.size < checkpoint + 64 * 1024);
    // Sizes scale with the checkpoint: the VAE is 80/1024 of it.
    let vae = stored
        .iter()
        .find(|m| m.key.contains("/vae/"))
        .expect("vae");
    assert!(vae.size > checkpoint * 80 / 1024 && vae.size < checkpoint * 80 / 1024 + 16 * 1024);
}

#[test]
fn comfy_tree_prefixes() {
    let keys = |prefix| -> Vec<String> {
        ComfyTree::new(prefix, 1 << 20)
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect()
    };
    assert!(keys("").iter().all(|k| !k.starts_with('/')));
    assert_eq!(keys("m"), keys("m/"));
    assert!(keys("a/b").iter().all(|k| k.starts_with("a/b/")));
}
