//! Reading a file on behalf of a check: opened non-blocking (a FIFO must not hold the
//! engine's thread), refused unless it is a regular file (not `/dev/zero`, not a
//! directory), and read up to a cap.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads `path` as text of at most `cap` bytes; the error is a phrase for a message
/// ("is a FIFO, not a regular file", "is larger than 64 KiB", "no such file").
pub fn read_regular(path: &Path, cap: usize) -> Result<String, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| describe(&e))?;
    let meta = file.metadata().map_err(|e| describe(&e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a plain file"
        };
        return Err(format!("is {what}, not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| describe(&e))?;
    if bytes.len() > cap {
        return Err(format!("is larger than {}", vigia_api::Bytes(cap)));
    }
    String::from_utf8(bytes).map_err(|_| "is not text (UTF-8)".to_string())
}

/// "no such file", "permission denied": the kind, as a phrase.
fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        std::io::ErrorKind::PermissionDenied => "cannot be read (permission denied)".into(),
        _ => format!("cannot be read ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_a_sane_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a plain syscall on a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_regular(&fifo, 100).unwrap_err(),
            "is a FIFO, not a regular file"
        );
        assert_eq!(
            read_regular(Path::new("/dev/zero"), 100).unwrap_err(),
            "is a character device, not a regular file"
        );
        assert_eq!(
            read_regular(dir.path(), 100).unwrap_err(),
            "is a directory, not a regular file"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'1'; 5000]).unwrap();
        assert_eq!(
            read_regular(&big, 4096).unwrap_err(),
            "is larger than 4 KiB"
        );
        std::fs::write(&big, "123\n").unwrap();
        assert_eq!(read_regular(&big, 4096).unwrap(), "123\n");
        assert_eq!(
            read_regular(&dir.path().join("none"), 10).unwrap_err(),
            "does not exist"
        );
    }
}
