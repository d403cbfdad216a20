//! Property tests over hostile input: arbitrary safetensors header bytes and arbitrary
//! bucket keys. Whatever S3 holds, the filesystem never panics, never shows a name that is
//! not a valid file name, never shows one key twice, and never loses a key that could be a
//! name.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use modelfs_fs::namespace::names::check_segment;
use modelfs_fs::namespace::{Namespace, NodeKind, ROOT_INO};
use modelfs_fs::read::load_detect::{header_end, FileKind, LoadDetector, MAX_HEADER_LEN};
use modelfs_fs::store::MemoryStore;
use proptest::prelude::*;

proptest! {
    #[test]
    fn header_lengths_are_bounded_by_the_file_and_the_format(
        first in proptest::collection::vec(any::<u8>(), 0..16),
        size in any::<u64>(),
    ) {
        if let Some(end) = header_end(&first, size) {
            prop_assert!(end <= size);
            prop_assert!(end - 8 <= MAX_HEADER_LEN);
        }
    }

    #[test]
    fn load_detection_never_panics(reads in proptest::collection::vec((any::<u64>(), any::<u32>()), 0..50), header in any::<Option<u64>>()) {
        let mut d = LoadDetector::new(FileKind::Safetensors);
        if let Some(h) = header {
            d.set_header_end(h % (1 << 40));
        }
        let mut other = LoadDetector::new(FileKind::OtherModel);
        for (offset, len) in reads {
            let offset = offset % (1 << 40);
            let end = offset + u64::from(len);
            d.observe(offset, end, 1 << 20, 1 << 40);
            other.observe(offset, end, 1 << 20, 1 << 40);
        }
    }
}

/// Walks the whole tree; returns every path shown.
fn walk(ns: &Namespace, rt: &tokio::runtime::Runtime) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((ino, prefix)) = stack.pop() {
        let listing = rt.block_on(ns.listing(ino)).expect("listing");
        let names: BTreeSet<&str> = listing.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names.len(),
            listing.entries.len(),
            "a name shown twice in {prefix}"
        );
        for e in &listing.entries {
            assert!(check_segment(&e.name).is_ok(), "invalid name {:?}", e.name);
            let path = format!("{prefix}{}", e.name);
            match e.kind {
                NodeKind::Directory => stack.push((e.ino, format!("{path}/"))),
                NodeKind::File => out.push(path),
            }
        }
    }
    out.sort();
    out
}

fn key_strategy() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("a\0b".to_string()),
        Just("x".repeat(256)),
        "[a-c]{1,3}",
        "[ü模 .-]{1,4}",
    ];
    proptest::collection::vec(segment, 1..4).prop_map(|s| s.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bucket_maps_to_a_clean_tree(keys in proptest::collection::btree_set(key_strategy(), 0..20)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut store = MemoryStore::new();
        store.page_size = 3;
        for key in &keys {
            store.put(key, vec![1u8]);
        }
        let ns = Namespace::new(Arc::new(store), "", Duration::from_secs(60));
        let shown = walk(&ns, &rt);
        let all_keys: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        for path in &shown {
            prop_assert!(all_keys.contains(path.as_str()), "{path} is not a key");
        }
        // A key whose every segment is a valid name, and that is no other key's prefix
        // (the directory would win), must be shown.
        for key in &keys {
            let valid = key.split('/').all(|s| check_segment(s).is_ok());
            let shadowed = keys.iter().any(|k| k.starts_with(&format!("{key}/")));
            if valid && !shadowed {
                prop_assert!(shown.contains(key), "{key:?} lost");
            }
        }
    }
}
