//! The config file: read (`model`), checked (`validate`), turned into a runtime snapshot (`compile`).

pub mod actions;
pub mod aliases;
pub mod compile;
pub mod cors;
pub mod duration;
pub mod files;
pub mod hashing;
pub mod headers;
pub mod keys;
pub mod kubernetes;
pub mod limits;
pub mod model;
pub mod string_match;
pub mod validate;
pub mod watch;

pub use compile::compile;
pub use model::RawConfig;
pub use validate::{validate, Config};

use std::fmt;
use std::path::Path;

/// One problem in a config, located by its path (`routes[0].http[1].timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path to the field; empty for the whole document.
    pub path: String,
    /// What is wrong, and where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config; shown one per line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// Where the config came from.
    pub source_name: String,
    /// The problems, in document order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} error(s)", self.source_name, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n{e}")?;
        }
        Ok(())
    }
}

/// Parses YAML text into the raw model; syntax, type and unknown-field errors carry their path,
/// and so does a key repeated within a mapping (see [`keys::repeated`]).
/// A document whose aliases would expand past [`aliases::MAX_ALIAS_NODES`] nodes or
/// [`aliases::MAX_ALIAS_BYTES`] bytes is refused before serde expands anything.
pub fn parse(text: &str, source_name: &str) -> Result<RawConfig, ConfigError> {
    let whole = |message: String| ConfigError {
        source_name: source_name.to_string(),
        errors: vec![FieldError {
            path: String::new(),
            message,
        }],
    };
    match aliases::check(text) {
        Ok(()) => {}
        // Nothing to expand: serde reports the syntax error in the words users already know.
        Err(aliases::AliasError::Syntax(_)) if !aliases::may_have_aliases(text) => {}
        // What the scanner cannot read, serde might, expanding aliases never measured.
        Err(aliases::AliasError::Syntax(e)) => return Err(whole(format!("invalid YAML: {e}"))),
        Err(e) => return Err(whole(e.to_string())),
    }
    let repeats = keys::repeated(text);
    if !repeats.is_empty() {
        return Err(ConfigError {
            source_name: source_name.to_string(),
            errors: repeats,
        });
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        // The YAML error text may already start with this path or its parent's; say it once.
        let text = e.into_inner().to_string();
        let message = match text.split_once(": ") {
            Some((head, rest)) if !head.is_empty() && path.starts_with(head) => rest.to_string(),
            _ => text,
        };
        ConfigError {
            source_name: source_name.to_string(),
            errors: vec![FieldError { path, message }],
        }
    })
}

/// Parses and validates YAML text.
pub fn from_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let raw = parse(text, source_name)?;
    validate(&raw).map_err(|errors| ConfigError {
        source_name: source_name.to_string(),
        errors,
    })
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_hashed(path).1
}

/// [`load`], and the checks on disk that only starting needs (listener certificates, the
/// token and state files, see [`validate::check_files`]), all problems listed together.
/// Returns the config and its warnings.
pub fn load_for_start(path: &Path) -> Result<(Config, Vec<FieldError>), ConfigError> {
    let name = path.display().to_string();
    let text = read_text(path).map_err(|(_, e)| e)?.1;
    let raw = parse(&text, &name)?;
    let (files, warnings) = validate::check_files(&raw);
    match validate(&raw) {
        Ok(config) if files.is_empty() => Ok((config, warnings)),
        Ok(_) => Err(ConfigError {
            source_name: name,
            errors: files,
        }),
        Err(mut errors) => {
            errors.extend(files);
            Err(ConfigError {
                source_name: name,
                errors,
            })
        }
    }
}

/// Reads, parses and validates a config file, and returns the hash of the bytes read (`None`
/// when it could not be read), so a watcher can tell later whether the file changed. The file
/// must be a regular file (symlinks followed) of at most [`files::MAX_FILE_BYTES`].
pub fn load_hashed(path: &Path) -> (Option<u64>, Result<Config, ConfigError>) {
    match read_text(path) {
        Ok((hash, text)) => (Some(hash), from_str(&text, &path.display().to_string())),
        Err((hash, e)) => (hash, Err(e)),
    }
}

/// A config file's text and the hash of its bytes; the error carries the hash when the bytes
/// were read but are not text.
fn read_text(path: &Path) -> Result<(u64, String), (Option<u64>, ConfigError)> {
    let failed = |message: String| ConfigError {
        source_name: path.display().to_string(),
        errors: vec![FieldError {
            path: String::new(),
            message,
        }],
    };
    let bytes = match files::read_regular(path, files::MAX_FILE_BYTES) {
        Ok(bytes) => bytes,
        Err(e @ files::FileError::Io(_)) => {
            return Err((None, failed(format!("cannot read the file: {e}"))))
        }
        Err(e) => return Err((None, failed(format!("the file {e}")))),
    };
    let hash = content_hash(&bytes);
    match String::from_utf8(bytes) {
        Ok(text) => Ok((hash, text)),
        Err(e) => Err((
            Some(hash),
            failed(format!(
                "cannot read the file: it is not UTF-8 text ({})",
                e.utf8_error()
            )),
        )),
    }
}

/// The hash of a config file's bytes as [`load_hashed`] would read them; `None` when it cannot
/// be read.
pub fn file_hash(path: &Path) -> Option<u64> {
    files::read_regular(path, files::MAX_FILE_BYTES)
        .ok()
        .map(|b| content_hash(&b))
}

/// A hash of a config file's bytes.
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}
