//! Reading the files a config names (and the config file itself), safely whatever they are.
//!
//! Every file splitgate reads goes through [`read_regular`]: a FIFO would block the read forever,
//! a device like `/dev/zero` would fill memory, and a directory is a confusing error. Symlinks
//! are followed, since Kubernetes mounts ConfigMaps and Secrets as symlinks to regular files.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// The most bytes splitgate reads from any one file: a config file, a certificate, key or CA
/// bundle, a token or the state file. Far above any real one (a system CA bundle is ~200 KiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed (missing, no permission, ...).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It exists but is no regular file, so reading it could block or never end.
    #[error("is not a regular file ({0})")]
    NotRegular(FileKind),
    /// It holds more than the limit.
    #[error("is larger than {} MiB", .0 >> 20)]
    TooLarge(u64),
}

impl FileError {
    /// Whether the file does not exist, for callers that treat that as "nothing yet".
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a path that is not a regular file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device (`/dev/zero`, a terminal).
    CharDevice,
    /// A block device (a disk).
    BlockDevice,
    /// Anything else the platform has.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "an unknown kind of file",
        })
    }
}

fn kind_of(t: std::fs::FileType) -> FileKind {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return FileKind::Fifo;
        }
        if t.is_socket() {
            return FileKind::Socket;
        }
        if t.is_char_device() {
            return FileKind::CharDevice;
        }
        if t.is_block_device() {
            return FileKind::BlockDevice;
        }
    }
    if t.is_dir() {
        FileKind::Directory
    } else {
        FileKind::Other
    }
}

/// Opens `path` for reading without ever blocking in `open` itself: on Unix, opening a FIFO
/// that no one writes to waits forever unless `O_NONBLOCK` is set. The flag changes nothing for
/// reads of a regular file, and anything else is refused before it is read.
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// Reads the whole of `path` (symlinks followed) when it is a regular file of at most `limit`
/// bytes. The type is checked on the opened file, so a path swapped between a check and the
/// read cannot slip a FIFO in, and at most `limit + 1` bytes are read, so a file that grows
/// while it is read cannot fill memory either.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge(limit));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge(limit));
    }
    Ok(bytes)
}

/// [`read_regular`] for a text file: the bytes must be UTF-8.
pub fn read_regular_text(path: &Path, limit: u64) -> Result<String, FileError> {
    let bytes = read_regular(path, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        FileError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {}", e.utf8_error()),
        ))
    })
}

/// The most bytes of an admin token file; a bearer token is a line of text.
pub const MAX_TOKEN_BYTES: u64 = 64 << 10;

/// Reads the admin bearer token: the file's text, trimmed, not empty. The error names the file.
pub fn read_token(path: &Path) -> Result<String, String> {
    match read_regular_text(path, MAX_TOKEN_BYTES) {
        Ok(text) if text.trim().is_empty() => {
            Err(format!("{:?} is empty", path.display().to_string()))
        }
        Ok(text) => Ok(text.trim().to_string()),
        Err(e @ FileError::Io(_)) => Err(format!("cannot read {}: {e}", path.display())),
        Err(e) => Err(format!("{:?} {e}", path.display().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("splitgate-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_regular_file_and_one_behind_a_symlink() {
        let dir = temp("symlink");
        let real = dir.join("real.txt");
        std::fs::write(&real, "hello").unwrap();
        assert_eq!(read_regular(&real, 5).unwrap(), b"hello");
        #[cfg(unix)]
        {
            let link = dir.join("link.txt");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            assert_eq!(read_regular_text(&link, 100).unwrap(), "hello");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_a_file_over_the_limit() {
        let dir = temp("limit");
        let f = dir.join("big.txt");
        std::fs::write(&f, "123456").unwrap();
        assert!(matches!(read_regular(&f, 5), Err(FileError::TooLarge(5))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_a_directory_and_devices_and_reports_a_missing_file() {
        let dir = temp("kinds");
        let e = read_regular(&dir, 100).unwrap_err();
        assert_eq!(e.to_string(), "is not a regular file (a directory)");
        #[cfg(unix)]
        {
            let e = read_regular(Path::new("/dev/zero"), 100).unwrap_err();
            assert_eq!(e.to_string(), "is not a regular file (a character device)");
        }
        let e = read_regular(&dir.join("missing"), 100).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_fifo_without_blocking() {
        let dir = temp("fifo");
        let fifo = dir.join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer ever opens it: a blocking open would hang here.
        let e = read_regular(&fifo, 100).unwrap_err();
        assert_eq!(e.to_string(), "is not a regular file (a FIFO)");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
