//! A size as operators read it in messages (`16 MiB`, `1.5 MiB`, `64 KiB`, `100 bytes`)
//! and write it in config.yaml (`256MiB`, `1 GiB`, `512KiB`, `4096B`).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub usize);

impl FromStr for Bytes {
    type Err = String;

    /// A whole number and a unit: `B`, `KiB`, `MiB`, `GiB` (binary; `KB`, `MB`, `GB`
    /// are read as the same, as people mean them for files). A bare number is refused,
    /// as durations are: `256` could be bytes or megabytes.
    fn from_str(text: &str) -> Result<Bytes, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let n: usize = num
            .parse()
            .map_err(|_| format!("`{text}` is not a size: write e.g. 256MiB, 1GiB or 512KiB"))?;
        let mult: usize = match unit.to_ascii_lowercase().as_str() {
            "b" | "bytes" => 1,
            "kib" | "kb" | "k" => 1 << 10,
            "mib" | "mb" | "m" => 1 << 20,
            "gib" | "gb" | "g" => 1 << 30,
            "" => return Err(format!("`{text}` has no unit: write e.g. {n}MiB or {n}B")),
            other => {
                return Err(format!(
                    "`{other}` is not a unit of size: use B, KiB, MiB or GiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Bytes)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}B", self.0))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: usize = 1 << 10;
        const MIB: usize = 1 << 20;
        let n = self.0;
        if n >= MIB {
            if n.is_multiple_of(MIB) {
                write!(f, "{} MiB", n / MIB)
            } else {
                write!(f, "{:.1} MiB", n as f64 / MIB as f64)
            }
        } else if n >= KIB {
            write!(f, "{} KiB", n / KIB)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(Bytes(16 << 20).to_string(), "16 MiB");
        assert_eq!(Bytes(3 << 19).to_string(), "1.5 MiB");
        assert_eq!(Bytes(64 << 10).to_string(), "64 KiB");
        assert_eq!(Bytes(100).to_string(), "100 bytes");
    }

    #[test]
    fn sizes_parse_as_people_write_them() {
        assert_eq!("256MiB".parse(), Ok(Bytes(256 << 20)));
        assert_eq!("1 GiB".parse(), Ok(Bytes(1 << 30)));
        assert_eq!("512kb".parse(), Ok(Bytes(512 << 10)));
        assert_eq!("4096B".parse(), Ok(Bytes(4096)));
        assert!("256".parse::<Bytes>().unwrap_err().contains("has no unit"));
        assert!("2 TB"
            .parse::<Bytes>()
            .unwrap_err()
            .contains("not a unit of size"));
        assert!("lots".parse::<Bytes>().unwrap_err().contains("not a size"));
    }
}
