//! Config errors: one message each, with the file, position and path where there is one.

use std::fmt;
use std::path::Path;

/// A position in the source: both 1-based, as editors show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One problem in a config file, e.g.
/// `config.yaml:14:11: checks[2].port: 70000 is not a port (1-65535)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, when known (set by whoever read the file).
    pub file: Option<String>,
    pub pos: Option<Pos>,
    /// `checks[2].port`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn at(pos: Pos, path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            pos: Some(pos),
            path: path.to_string(),
            message: message.into(),
        }
    }

    pub fn new(path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            pos: None,
            path: path.to_string(),
            message: message.into(),
        }
    }

    pub fn in_file(mut self, file: &Path) -> Self {
        self.file.get_or_insert_with(|| file.display().to_string());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote_location = false;
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            wrote_location = true;
        }
        if let Some(pos) = self.pos {
            if wrote_location {
                f.write_str(":")?;
            }
            write!(f, "{pos}")?;
            wrote_location = true;
        }
        if wrote_location {
            f.write_str(": ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one pass, so the operator fixes them all in one edit.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_result<T>(self, ok: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(self)
        }
    }

    pub fn in_file(self, file: &Path) -> Self {
        ConfigErrors(self.0.into_iter().map(|e| e.in_file(file)).collect())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
