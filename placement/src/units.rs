//! Quantities as people read them in logs, `GetOperators` and `/status`.

/// `bytes` in binary units with one decimal: `512 B`, `1.2 MiB`, `3.0 GiB`.
pub fn show_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::show_bytes;

    #[test]
    fn bytes_are_shown_in_binary_units_with_one_decimal() {
        assert_eq!(show_bytes(0), "0 B");
        assert_eq!(show_bytes(1023), "1023 B");
        assert_eq!(show_bytes(1024), "1.0 KiB");
        assert_eq!(show_bytes(1_258_291), "1.2 MiB");
        assert_eq!(show_bytes(3 << 30), "3.0 GiB");
    }
}
