//! Which S3 key segments can be POSIX file names.
//!
//! S3 keys are arbitrary UTF-8 strings; a directory entry is not. A segment is refused when it
//! is empty (`a//b`), `.` or `..` (a path escape), contains NUL, or is longer than 255 bytes
//! (`NAME_MAX`). Refused keys are skipped, never renamed: a renamed key could collide with a
//! real one.

/// Why a key segment cannot be a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidName {
    /// An empty segment, as in `a//b`.
    Empty,
    /// `.` or `..`.
    Dot,
    /// Contains a NUL byte.
    Nul,
    /// Longer than 255 bytes.
    TooLong,
}

impl std::fmt::Display for InvalidName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidName::Empty => "it has an empty path segment",
            InvalidName::Dot => "it has a '.' or '..' path segment",
            InvalidName::Nul => "it contains a NUL byte",
            InvalidName::TooLong => "a path segment is longer than 255 bytes",
        })
    }
}

/// Longest file name Linux accepts.
pub const NAME_MAX: usize = 255;

/// Checks that `segment` (one key component, without `/`) can be a directory entry name.
pub fn check_segment(segment: &str) -> Result<(), InvalidName> {
    if segment.is_empty() {
        Err(InvalidName::Empty)
    } else if segment == "." || segment == ".." {
        Err(InvalidName::Dot)
    } else if segment.contains('\0') {
        Err(InvalidName::Nul)
    } else if segment.len() > NAME_MAX {
        Err(InvalidName::TooLong)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_unusual_legal_names() {
        for ok in [
            "model.safetensors",
            "with space.safetensors",
            "ünïcødé-模型.safetensors",
            "...",
            ".hidden",
            &"x".repeat(255),
        ] {
            assert_eq!(check_segment(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_names_that_could_escape_or_break_posix() {
        assert_eq!(check_segment(""), Err(InvalidName::Empty));
        assert_eq!(check_segment("."), Err(InvalidName::Dot));
        assert_eq!(check_segment(".."), Err(InvalidName::Dot));
        assert_eq!(check_segment("a\0b"), Err(InvalidName::Nul));
        assert_eq!(check_segment(&"x".repeat(256)), Err(InvalidName::TooLong));
    }
}
