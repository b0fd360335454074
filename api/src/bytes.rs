//! A size as operators read it in messages: `16 MiB`, `1.5 MiB`, `64 KiB`, `100 bytes`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub usize);

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
}
