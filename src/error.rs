//! Errors, and the one place they are rendered for people.

use std::fmt;
use std::path::{Path, PathBuf};

/// Exit codes of the command line, as the README documents them.
pub mod exit {
    /// Everything worked.
    pub const SUCCESS: u8 = 0;
    /// The run ended with failed trials, or something failed while running.
    pub const FAILED: u8 = 1;
    /// Bad input: spec, override, data path, checkpoint, arguments.
    pub const BAD_INPUT: u8 = 2;
    /// Stopped by Ctrl-C (128 + SIGINT, as shells report it); finished trials are kept.
    pub const INTERRUPTED: u8 = 130;
}

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Every way xferlab can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: spec, override, data or checkpoint (exit code 2). Boxed: it is large and rare.
    #[error("{0}")]
    Input(Box<InputError>),
    /// Reading or writing a file of the run store or a dataset.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Ctrl-C or a stop signal stopped the work.
    #[error("interrupted (Ctrl-C, SIGTERM or SIGUSR1)")]
    Interrupted,
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A JSON file of the run store (a trial record, the plan, the sweep's identity) that
    /// does not hold what xferlab writes there: damaged, or written by something else.
    #[error("cannot read {}: {reason}", path.display())]
    CorruptRecord {
        /// The file.
        path: PathBuf,
        /// What the JSON parser found wrong, with line and column.
        reason: String,
    },
    /// A figure of a report could not be drawn or rendered.
    #[error("cannot draw figure {name}: {reason}")]
    Figure {
        /// The figure's file stem, e.g. `accuracy-vs-depth`.
        name: String,
        /// What the drawing library reported.
        reason: String,
    },
}

impl From<InputError> for Error {
    fn from(error: InputError) -> Self {
        Error::Input(Box::new(error))
    }
}

impl Error {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) => exit::BAD_INPUT,
            Error::Interrupted => exit::INTERRUPTED,
            _ => exit::FAILED,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// Where a piece of input came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A file, with the position and the text of that line when known.
    File {
        /// The file.
        path: PathBuf,
        /// Line and column.
        position: Option<Position>,
        /// The text of that line, to underline.
        line_text: Option<String>,
    },
    /// An environment variable.
    Env(String),
    /// A `--set` override.
    Override(String),
}

/// Something the user gave is wrong: what, where, and what would be valid.
#[derive(Debug, Clone, PartialEq)]
pub struct InputError {
    /// What is wrong.
    pub message: String,
    /// Where it came from.
    pub origin: Option<Origin>,
    /// What would be valid, or a suggestion.
    pub help: Option<String>,
}

impl InputError {
    /// An error with no known origin.
    pub fn new(message: impl Into<String>) -> Self {
        InputError {
            message: message.into(),
            origin: None,
            help: None,
        }
    }

    /// Adds a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Sets where the input came from.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }
}

impl std::error::Error for InputError {}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        // The gutter is as wide as the line number, as in rustc's messages.
        let mut pad = String::from(" ");
        match &self.origin {
            Some(Origin::File {
                path,
                position: Some(p),
                line_text,
            }) => {
                let number = p.line.to_string();
                pad = " ".repeat(number.len());
                writeln!(f, "{pad}--> {}:{}:{}", shown(path), p.line, p.column)?;
                if let Some(text) = line_text {
                    // A very long line is shown as a window around the column.
                    const WIDTH: usize = 100;
                    let chars: Vec<char> = text.chars().collect();
                    let column = p.column.saturating_sub(1).min(chars.len());
                    let start = if chars.len() > WIDTH {
                        column.saturating_sub(WIDTH / 2)
                    } else {
                        0
                    };
                    let end = chars.len().min(start + WIDTH);
                    let mut shown_text: String = chars[start..end].iter().collect();
                    let mut before: String = chars[start..column]
                        .iter()
                        .map(|&c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    if start > 0 {
                        shown_text.insert(0, '…');
                        before.insert(0, ' ');
                    }
                    if end < chars.len() {
                        shown_text.push('…');
                    }
                    let token = chars[column..end]
                        .iter()
                        .take_while(|c| !":,{}[] ".contains(**c))
                        .count()
                        .max(1);
                    writeln!(f, "{pad} |")?;
                    writeln!(f, "{number} | {shown_text}")?;
                    writeln!(f, "{pad} | {before}{}", "^".repeat(token))?;
                }
            }
            Some(Origin::File {
                path,
                position: None,
                ..
            }) => writeln!(f, "{pad}--> {}", shown(path))?,
            Some(Origin::Env(name)) => writeln!(f, "{pad}--> environment variable {name}")?,
            Some(Origin::Override(text)) => writeln!(f, "{pad}--> --set {text}")?,
            None => {}
        }
        if let Some(help) = &self.help {
            writeln!(f, "{pad} = help: {help}")?;
        }
        Ok(())
    }
}

/// A path as people want to read it: relative to the working folder when it is inside it.
pub fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}

/// Result with xferlab's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
