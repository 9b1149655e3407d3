//! The config file: read (`model`), checked (`validate`), turned into a runtime snapshot (`compile`).

pub mod aliases;
pub mod compile;
pub mod duration;
pub mod files;
pub mod headers;
pub mod kubernetes;
pub mod limits;
pub mod model;
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

/// Parses YAML text into the raw model; syntax, type and unknown-field errors carry their path.
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

/// [`load`], then the checks on disk that only starting needs (listener certificates, see
/// [`validate::check_files`]). Returns the config and its warnings.
pub fn load_for_start(path: &Path) -> Result<(Config, Vec<FieldError>), ConfigError> {
    let config = load(path)?;
    let (errors, warnings) = validate::check_files(&config);
    if errors.is_empty() {
        Ok((config, warnings))
    } else {
        Err(ConfigError {
            source_name: path.display().to_string(),
            errors,
        })
    }
}

/// Reads, parses and validates a config file, and returns the hash of the bytes read (`None`
/// when it could not be read), so a watcher can tell later whether the file changed. The file
/// must be a regular file (symlinks followed) of at most [`files::MAX_FILE_BYTES`].
pub fn load_hashed(path: &Path) -> (Option<u64>, Result<Config, ConfigError>) {
    let name = path.display().to_string();
    let failed = |message: String| ConfigError {
        source_name: name.clone(),
        errors: vec![FieldError {
            path: String::new(),
            message,
        }],
    };
    let bytes = match files::read_regular(path, files::MAX_FILE_BYTES) {
        Ok(bytes) => bytes,
        Err(e @ files::FileError::Io(_)) => {
            return (None, Err(failed(format!("cannot read the file: {e}"))))
        }
        Err(e) => return (None, Err(failed(format!("the file {e}")))),
    };
    let hash = content_hash(&bytes);
    match String::from_utf8(bytes) {
        Ok(text) => (Some(hash), from_str(&text, &name)),
        Err(e) => (
            Some(hash),
            Err(failed(format!(
                "cannot read the file: it is not UTF-8 text ({})",
                e.utf8_error()
            ))),
        ),
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
