use super::*;
use crate::store::MemoryStore;

fn store_with(keys: &[&str]) -> Arc<MemoryStore> {
    let mut store = MemoryStore::new();
    store.page_size = 2; // every listing below spans several pages
    for key in keys {
        store.put(key, key.as_bytes().to_vec());
    }
    Arc::new(store)
}

/// The names `ino` lists, a directory's with a trailing `/` (as `ls -F` writes them).
async fn names(ns: &Namespace, ino: u64) -> Vec<String> {
    let listing = ns.listing(ino).await.unwrap();
    listing
        .entries
        .iter()
        .map(|e| match e.kind {
            NodeKind::Directory => format!("{}/", e.name),
            NodeKind::File => e.name.clone(),
        })
        .collect()
}

#[tokio::test]
async fn lists_nested_tree_under_prefix() {
    let store = store_with(&[
        "models/checkpoints/a.safetensors",
        "models/checkpoints/b.safetensors",
        "models/loras/x/y.safetensors",
        "models/vae/v.safetensors",
        "other/ignored",
    ]);
    let ns = Namespace::new(store, "models/", Duration::from_secs(60));
    assert_eq!(
        names(&ns, ROOT_INO).await,
        ["checkpoints/", "loras/", "vae/"]
    );
    let ckpt = ns.lookup(ROOT_INO, "checkpoints").await.unwrap();
    let file = ns.lookup(ckpt.ino, "a.safetensors").await.unwrap();
    assert_eq!(file.kind, NodeKind::File);
    assert_eq!(file.size, "models/checkpoints/a.safetensors".len() as u64);
    let version = ns.open(file.ino).await.unwrap();
    assert_eq!(&*version.key, "models/checkpoints/a.safetensors");
    assert!(matches!(
        ns.lookup(ROOT_INO, "missing").await,
        Err(FsError::NotFound(_))
    ));
}

#[tokio::test]
async fn directory_wins_over_same_named_object_and_markers_are_hidden() {
    let store = store_with(&["a", "a/b", "dir/", "dir/file"]);
    let ns = Namespace::new(store, "", Duration::from_secs(60));
    assert_eq!(names(&ns, ROOT_INO).await, ["a/", "dir/"]);
    let dir = ns.lookup(ROOT_INO, "dir").await.unwrap();
    assert_eq!(names(&ns, dir.ino).await, ["file"]);
}

#[tokio::test]
async fn keys_that_cannot_be_names_are_skipped() {
    let long = format!("{}.safetensors", "x".repeat(300));
    let store = store_with(&[
        "ok.safetensors",
        "a//b",
        "../escape",
        "./dot",
        "sub/..",
        "nul\0name",
        &long,
        "sub/fine",
    ]);
    let ns = Namespace::new(store, "", Duration::from_secs(60));
    assert_eq!(names(&ns, ROOT_INO).await, ["a/", "ok.safetensors", "sub/"]);
    let a = ns.lookup(ROOT_INO, "a").await.unwrap();
    assert!(
        names(&ns, a.ino).await.is_empty(),
        "a//b has an empty segment"
    );
    let sub = ns.lookup(ROOT_INO, "sub").await.unwrap();
    assert_eq!(names(&ns, sub.ino).await, ["fine"]);
    assert!(ns.lookup(ROOT_INO, "..").await.is_err());
}

#[tokio::test]
async fn listing_is_cached_for_the_ttl_and_refreshed_after() {
    let store = store_with(&["m/one"]);
    let cached = Namespace::new(store.clone(), "", Duration::from_secs(3600));
    let fresh = Namespace::new(store.clone(), "", Duration::ZERO);
    let m_cached = cached.lookup(ROOT_INO, "m").await.unwrap();
    let m_fresh = fresh.lookup(ROOT_INO, "m").await.unwrap();
    assert_eq!(names(&cached, m_cached.ino).await.len(), 1);
    let mtime_before = fresh.attr(m_fresh.ino).unwrap().mtime;

    store.put("m/two", b"2".to_vec());
    store.delete("m/one");
    let lists_before = store.lists.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        names(&cached, m_cached.ino).await,
        ["one"],
        "within the TTL the old listing is served"
    );
    assert_eq!(
        store.lists.load(std::sync::atomic::Ordering::Relaxed),
        lists_before,
        "a cached listing makes no request"
    );
    assert_eq!(
        names(&fresh, m_fresh.ino).await,
        ["two"],
        "after the TTL the new object appears and the deleted one is gone"
    );
    assert!(fresh.attr(m_fresh.ino).unwrap().mtime >= mtime_before);
}

#[tokio::test]
async fn open_pins_the_current_etag_after_the_ttl() {
    let store = store_with(&["f"]);
    let ns = Namespace::new(store.clone(), "", Duration::ZERO);
    let f = ns.lookup(ROOT_INO, "f").await.unwrap();
    let first = ns.open(f.ino).await.unwrap();
    let new = store.put("f", b"new contents".to_vec());
    let second = ns.open(f.ino).await.unwrap();
    assert_ne!(first.etag, second.etag);
    assert_eq!(&*second.etag, new.etag.as_str());
    assert_eq!(second.size, 12);
    store.delete("f");
    assert!(matches!(ns.open(f.ino).await, Err(FsError::NotFound(_))));
}

#[tokio::test]
async fn a_listing_that_never_ends_is_given_up_after_a_bounded_number_of_pages() {
    let mut store = MemoryStore::new();
    store.page_size = 1;
    for i in 0..=MAX_LIST_PAGES {
        store.put(&format!("m/f{i:05}"), vec![]);
    }
    let store = Arc::new(store);
    let ns = Namespace::new(store.clone(), "m/", Duration::from_secs(60));
    let err = ns.listing(ROOT_INO).await.unwrap_err();
    assert!(err.to_string().contains("pages"), "{err}");
    assert_eq!(
        store.lists.load(std::sync::atomic::Ordering::Relaxed),
        MAX_LIST_PAGES as u64
    );
}

#[tokio::test]
async fn a_shared_namespace_lists_the_folders_of_a_listed_directory_ahead() {
    let store = MemoryStore::new();
    for key in ["checkpoints/a", "loras/b", "loras/deep/c", "vae/d", "top"] {
        store.put(key, vec![1]);
    }
    let store = Arc::new(store);
    let lists = || store.lists.load(std::sync::atomic::Ordering::Relaxed);
    let ns = Namespace::shared(store.clone(), "", Duration::from_secs(60));
    ns.listing(ROOT_INO).await.unwrap();
    // The root, then its three folders in the background; not the folder inside loras/.
    for _ in 0..200 {
        if lists() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(lists(), 4, "one level ahead");
    let loras = ns.lookup(ROOT_INO, "loras").await.unwrap();
    assert!(ns.lookup(loras.ino, "b").await.is_ok());
    ns.lookup(ROOT_INO, "vae").await.unwrap();
    assert_eq!(
        lists(),
        4,
        "lookups in listed-ahead folders make no request"
    );
    // A plain namespace lists nothing ahead.
    let plain = Namespace::new(store.clone(), "", Duration::from_secs(60));
    plain.listing(ROOT_INO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(lists(), 5);
}

/// Lists `ino` again (with a zero TTL every listing is fetched anew).
async fn relist(ns: &Namespace, ino: u64) {
    ns.listing(ino).await.unwrap();
}

#[tokio::test]
async fn forget_drops_an_inode_the_bucket_no_longer_lists() {
    let store = store_with(&["a", "b"]);
    let ns = Namespace::new(store.clone(), "", Duration::ZERO);
    let a = ns.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!(ns.inode_count(), 3, "the root, a and b");
    store.delete("a");
    relist(&ns, ROOT_INO).await;
    assert!(ns.attr(a.ino).is_ok(), "the kernel still holds a");
    ns.forget(a.ino, 1);
    assert!(matches!(ns.attr(a.ino), Err(FsError::NotFound(_))));
    assert_eq!(ns.inode_count(), 2, "the root and b");
}

#[tokio::test]
async fn an_inode_stays_until_every_lookup_is_forgotten() {
    let store = store_with(&["a"]);
    let ns = Namespace::new(store.clone(), "", Duration::ZERO);
    let a = ns.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!(ns.lookup(ROOT_INO, "a").await.unwrap().ino, a.ino);
    store.delete("a");
    relist(&ns, ROOT_INO).await;
    ns.forget(a.ino, 1);
    assert!(ns.attr(a.ino).is_ok(), "one lookup is still counted");
    ns.forget(a.ino, 1);
    assert!(ns.attr(a.ino).is_err());
    // The root is never forgotten, and unknown numbers are ignored.
    ns.forget(ROOT_INO, 1);
    ns.forget(9999, 1);
    assert!(ns.attr(ROOT_INO).is_ok());
}

#[tokio::test]
async fn a_forgotten_name_looked_up_again_gets_a_number_no_live_inode_has() {
    let store = store_with(&["a", "b"]);
    let ns = Namespace::new(store.clone(), "", Duration::ZERO);
    let a = ns.lookup(ROOT_INO, "a").await.unwrap();
    let b = ns.lookup(ROOT_INO, "b").await.unwrap();
    store.delete("a");
    relist(&ns, ROOT_INO).await;
    ns.forget(a.ino, 1);
    store.put("a", b"back".to_vec());
    let again = ns.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!(again.size, 4);
    assert_ne!(again.ino, a.ino);
    assert_ne!(again.ino, b.ino);
    assert_eq!(ns.attr(b.ino).unwrap().kind, NodeKind::File);
    assert_eq!(ns.open(again.ino).await.unwrap().size, 4);
}

#[tokio::test]
async fn forgetting_a_directory_drops_its_listing_and_the_inodes_only_it_held() {
    let store = store_with(&["d/x", "d/y"]);
    let ns = Namespace::new(store.clone(), "", Duration::from_secs(3600));
    let d = ns.lookup(ROOT_INO, "d").await.unwrap();
    let x = ns.lookup(d.ino, "x").await.unwrap();
    assert_eq!(ns.inode_count(), 4, "the root, d, x and y");
    ns.forget(x.ino, 1);
    assert_eq!(ns.inode_count(), 4, "d's listing still holds x");
    ns.forget(d.ino, 1);
    assert_eq!(
        ns.inode_count(),
        2,
        "the root's listing still holds d, not d's children"
    );
    let lists = store.lists.load(std::sync::atomic::Ordering::Relaxed);
    let d_again = ns.lookup(ROOT_INO, "d").await.unwrap();
    assert_eq!(d_again.ino, d.ino, "d never left the root's listing");
    let x_again = ns.lookup(d.ino, "x").await.unwrap();
    assert_ne!(x_again.ino, x.ino);
    assert!(
        store.lists.load(std::sync::atomic::Ordering::Relaxed) > lists,
        "d is listed again"
    );
}

#[tokio::test]
async fn an_open_inode_survives_forget_until_release() {
    let store = store_with(&["f"]);
    let ns = Namespace::new(store.clone(), "", Duration::ZERO);
    let f = ns.lookup(ROOT_INO, "f").await.unwrap();
    let hold = ns.hold(f.ino).unwrap();
    store.delete("f");
    relist(&ns, ROOT_INO).await;
    ns.forget(f.ino, 1);
    assert_eq!(ns.attr(f.ino).unwrap().size, 1, "the open file keeps it");
    assert_eq!(ns.parent(f.ino), Some(ROOT_INO));
    drop(hold);
    assert!(matches!(ns.attr(f.ino), Err(FsError::NotFound(_))));
    assert_eq!(ns.inode_count(), 1);
}

#[tokio::test]
async fn the_inode_count_stays_bounded_while_keys_churn() {
    let store = Arc::new(MemoryStore::new());
    let ns = Namespace::new(store.clone(), "", Duration::ZERO);
    for round in 0..2_000u32 {
        store.put(&format!("k{round}"), vec![1]);
        if round > 0 {
            store.delete(&format!("k{}", round - 1));
        }
        let node = ns.lookup(ROOT_INO, &format!("k{round}")).await.unwrap();
        if round > 0 {
            let gone = ns.lookup(ROOT_INO, &format!("k{}", round - 1)).await;
            assert!(gone.is_err());
        }
        ns.forget(node.ino, 1);
    }
    assert!(ns.inode_count() <= 2, "{} inodes", ns.inode_count());
}
