//! One page of a ListObjectsV2 listing, computed over a bucket's ordered index.
//!
//! Like S3, each common prefix counts toward `max-keys` and appears once across all pages:
//! when a page ends on a common prefix, its continuation token says so, and the next page
//! skips every key rolled up into that prefix.

use std::ops::Bound;

use crate::encoding::{hex, unhex};
use crate::store::{Index, ObjectMeta};

/// Where a listing resumes: after a key, or after every key rolled up into a common prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Marker {
    /// Resume after this key.
    Key(String),
    /// Resume after every key under this common prefix.
    Prefix(String),
}

impl Marker {
    /// The opaque continuation token for this marker.
    pub fn to_token(&self) -> String {
        match self {
            Marker::Key(key) => format!("k{}", hex(key.as_bytes())),
            Marker::Prefix(prefix) => format!("p{}", hex(prefix.as_bytes())),
        }
    }

    /// Parses a token made by [`Marker::to_token`]; `None` if it is not one.
    pub fn from_token(token: &str) -> Option<Marker> {
        let decode = |rest: &str| String::from_utf8(unhex(rest)?).ok();
        if let Some(rest) = token.strip_prefix('k') {
            return decode(rest).map(Marker::Key);
        }
        token.strip_prefix('p').and_then(decode).map(Marker::Prefix)
    }

    fn position(&self) -> &str {
        match self {
            Marker::Key(s) | Marker::Prefix(s) => s,
        }
    }
}

/// The parameters of one ListObjectsV2 request.
#[derive(Debug, Default)]
pub(crate) struct ListQuery<'a> {
    /// Only keys starting with this.
    pub prefix: &'a str,
    /// Roll keys up at the first occurrence of this after the prefix (ignored when empty).
    pub delimiter: Option<&'a str>,
    /// Only keys after this.
    pub start_after: Option<&'a str>,
    /// Where the previous page ended.
    pub resume: Option<Marker>,
    /// At most this many keys plus common prefixes.
    pub max_keys: usize,
}

/// One entry of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// An object.
    Object(ObjectMeta),
    /// A common prefix (ends with the delimiter).
    Prefix(String),
}

/// One page of a listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    /// Objects and common prefixes, in key order.
    pub entries: Vec<Entry>,
    /// Where the next page starts, when the listing is truncated.
    pub next: Option<Marker>,
}

/// Computes one page of `query` over `index`.
pub(crate) fn list_page(index: &Index, query: &ListQuery<'_>) -> Page {
    let delimiter = query.delimiter.filter(|d| !d.is_empty());
    let prefix = query.prefix;

    // Start at the largest of: the prefix, start-after, the resume marker.
    let mut lower = Bound::Included(prefix);
    let resume_at = query.resume.as_ref().map(Marker::position);
    for candidate in [query.start_after, resume_at].into_iter().flatten() {
        let (Bound::Included(current) | Bound::Excluded(current)) = lower else {
            continue;
        };
        if candidate >= current {
            lower = Bound::Excluded(candidate);
        }
    }
    // The common prefix most recently emitted (here or on the previous page).
    let mut rolled_up: Option<&str> = match &query.resume {
        Some(Marker::Prefix(p)) => Some(p),
        _ => None,
    };

    let mut page = Page::default();
    let mut last: Option<Marker> = None;
    for (key, meta) in index.range::<str, _>((lower, Bound::Unbounded)) {
        if !key.starts_with(prefix) {
            // Keys at or above the prefix that do not start with it sort after all that do.
            break;
        }
        let common = delimiter.and_then(|d| {
            key[prefix.len()..]
                .find(d)
                .map(|at| &key[..prefix.len() + at + d.len()])
        });
        if common.is_some() && common == rolled_up {
            continue;
        }
        if page.entries.len() >= query.max_keys {
            page.next = last;
            return page;
        }
        match common {
            Some(common) => {
                page.entries.push(Entry::Prefix(common.to_string()));
                last = Some(Marker::Prefix(common.to_string()));
                rolled_up = Some(common);
            }
            None => {
                page.entries.push(Entry::Object(meta.clone()));
                last = Some(Marker::Key(key.clone()));
            }
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn index(keys: &[&str]) -> Index {
        keys.iter()
            .map(|k| (k.to_string(), ObjectMeta::fixture(k, "\"e\"", UNIX_EPOCH)))
            .collect()
    }

    fn names(page: &Page) -> Vec<String> {
        page.entries
            .iter()
            .map(|e| match e {
                Entry::Object(m) => m.key.clone(),
                Entry::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }

    /// Lists everything, `max_keys` at a time, through continuation tokens.
    fn all_pages(
        index: &Index,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
    ) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut resume = None;
        loop {
            let query = ListQuery {
                prefix,
                delimiter,
                start_after: None,
                resume: resume.take(),
                max_keys,
            };
            let page = list_page(index, &query);
            pages.push(names(&page));
            match page.next {
                Some(marker) => {
                    let token = marker.to_token();
                    resume = Some(Marker::from_token(&token).expect("token round-trips"));
                }
                None => return pages,
            }
            assert!(pages.len() < 100, "listing does not terminate");
        }
    }

    #[test]
    fn delimiter_and_pagination() {
        let idx = index(&["a/1", "a/2", "b", "c/x/y", "c/z", "d", "e", "f"]);
        let pages = all_pages(&idx, "", Some("/"), 2);
        assert_eq!(
            pages,
            vec![
                vec!["a/*".to_string(), "b".into()],
                vec!["c/*".into(), "d".into()],
                vec!["e".into(), "f".into()],
            ]
        );
        // One page holding everything is not truncated.
        assert_eq!(all_pages(&idx, "", Some("/"), 1000).len(), 1);
        // A page ending on a common prefix resumes after all its keys.
        let pages = all_pages(&idx, "", Some("/"), 1);
        assert_eq!(pages.concat(), ["a/*", "b", "c/*", "d", "e", "f"]);
    }

    #[test]
    fn prefix_and_nested_delimiter() {
        let idx = index(&["m/a", "m/b/c", "m/b/d", "m/bb", "n/a", "m"]);
        assert_eq!(
            all_pages(&idx, "m/", Some("/"), 10),
            vec![vec!["m/a", "m/b/*", "m/bb"]]
        );
        assert_eq!(
            all_pages(&idx, "m/b", Some("/"), 10),
            vec![vec!["m/b/*", "m/bb"]]
        );
        assert_eq!(
            all_pages(&idx, "m/", None, 10),
            vec![vec!["m/a", "m/b/c", "m/b/d", "m/bb"]]
        );
        assert_eq!(
            all_pages(&idx, "zzz", Some("/"), 10),
            vec![Vec::<String>::new()]
        );
        // A multi-character delimiter.
        let idx = index(&["x--1", "x--2", "y"]);
        assert_eq!(all_pages(&idx, "", Some("--"), 10), vec![vec!["x--*", "y"]]);
    }

    #[test]
    fn weird_keys() {
        let idx = index(&["a", "a/b", "a//b", "../x", "./y"]);
        assert_eq!(
            all_pages(&idx, "", Some("/"), 10),
            vec![vec!["../*", "./*", "a", "a/*"]]
        );
        assert_eq!(
            all_pages(&idx, "a/", Some("/"), 10),
            vec![vec!["a//*", "a/b"]]
        );
    }

    #[test]
    fn start_after() {
        let idx = index(&["a", "b", "c", "d"]);
        let query = ListQuery {
            start_after: Some("b"),
            max_keys: 1000,
            ..ListQuery::default()
        };
        assert_eq!(names(&list_page(&idx, &query)), ["c", "d"]);
        let query = ListQuery {
            start_after: Some("b"),
            resume: Some(Marker::Key("c".into())),
            max_keys: 1000,
            ..ListQuery::default()
        };
        assert_eq!(names(&list_page(&idx, &query)), ["d"]);
    }

    #[test]
    fn tokens() {
        for marker in [
            Marker::Key("ü/a b".into()),
            Marker::Prefix("p/".into()),
            Marker::Key(String::new()),
        ] {
            assert_eq!(Marker::from_token(&marker.to_token()), Some(marker));
        }
        assert_eq!(Marker::from_token("garbage"), None);
        assert_eq!(Marker::from_token("kzz"), None);
        assert_eq!(Marker::from_token(""), None);
    }
}
