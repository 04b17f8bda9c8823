//! Reading the files a config names (and the config itself) without trusting them: opened
//! non-blocking, so that a FIFO cannot block the open; required to be regular files, so that
//! `/dev/zero` or a FIFO is an error rather than an endless or a blocking read; and read up to a
//! size limit, so that no file can exhaust memory.
//!
//! A leaf: it imports nothing from this crate, so that `tls` and `config` can both use it.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest config file read: 16 MiB (a config with 100,000 backends is about 13 MB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The largest file a config names (admin token, TLS certificate chain and key, upstream CA
/// bundle): 1 MiB, far above any real one.
pub const MAX_NAMED_FILE_BYTES: u64 = 1 << 20;

/// Opens `path` for reading without blocking (a FIFO with no writer would block `open`) and
/// checks that it is a regular file no larger than `limit`.
pub fn open(path: &Path, limit: u64) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // Checked on the opened file, not the path: nothing can swap the file in between.
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a directory",
        ));
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(too_large(limit));
    }
    Ok(file)
}

/// Reads the whole of the regular file `path`, refusing one larger than `limit` bytes (also
/// when it grows while being read).
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open(path, limit)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("is larger than {} (the limit)", size_text(limit)),
    )
}

/// `bytes` in the largest binary unit that divides it (`1 MiB`, `16 MiB`, `1500 B`), as config
/// errors and limits print sizes.
pub(crate) fn size_text(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, b"s3cret").unwrap();
        assert_eq!(read(&path, 6).unwrap(), b"s3cret");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; 2048]).unwrap();
        let err = read(&path, 1024).unwrap_err();
        assert_eq!(err.to_string(), "is larger than 1 KiB (the limit)");
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read(Path::new("/dev/zero"), 1 << 20)
                .unwrap_err()
                .to_string(),
            "is not a regular file"
        );
        assert_eq!(
            read(dir.path(), 1 << 20).unwrap_err().to_string(),
            "is a directory"
        );
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        // A blocking open would wait here forever for a writer.
        assert_eq!(
            read(&fifo, 1 << 20).unwrap_err().to_string(),
            "is not a regular file"
        );
    }

    #[test]
    fn sizes_are_shown_in_binary_units() {
        assert_eq!(size_text(1 << 20), "1 MiB");
        assert_eq!(size_text(16 << 20), "16 MiB");
        assert_eq!(size_text(1500), "1500 B");
        assert_eq!(size_text(1 << 30), "1 GiB");
    }
}
