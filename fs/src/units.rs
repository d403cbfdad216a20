//! Parsing human-friendly durations (`30s`, `5m`, `500ms`), sizes (`512MiB`, `2G`) and octal
//! modes, for every command-line and mount-option surface (CLI, fstab, CSI attributes).

use std::time::Duration;

/// Parses a duration: a number with an optional unit `ms`, `s` (default), `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (value, unit) = number_and_unit(text, "duration", "30s, 5m, 500ms")?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Parses a byte size: a number with an optional unit (`K`, `KiB`, `M`, `MiB`, `G`, `GiB`,
/// `T`, `TiB`; all binary multiples).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (value, unit) = number_and_unit(text, "size", "512MiB, 2GiB")?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    Ok((value * (1u64 << shift) as f64) as u64)
}

/// Splits `text` into its leading decimal number and the unit after it. `what` and
/// `examples` name the quantity in the error when there is no number.
fn number_and_unit<'a>(
    text: &'a str,
    what: &str,
    examples: &str,
) -> Result<(f64, &'a str), String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value = number
        .parse()
        .map_err(|_| format!("invalid {what} {text:?} (examples: {examples})"))?;
    Ok((value, unit.trim()))
}

/// Parses an octal permission mode such as `0444` or `755`.
pub fn parse_mode(text: &str) -> Result<u16, String> {
    u16::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid octal mode {text:?} (example: 0444)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sizes_and_modes() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_mode("0444").unwrap(), 0o444);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert!(parse_mode("999").is_err());
    }
}
