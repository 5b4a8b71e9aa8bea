//! Where each key path sits in a YAML file, so errors can name line and column.
//!
//! figment reports errors by key path; serde_yaml keeps no positions. This walks the
//! file's YAML events once (aliases are not expanded, so it stays cheap on alias bombs)
//! and remembers the position of every key and every value by its dotted path.
//!
//! It also finds the first NaN or infinity written in the file: serde_yaml reads `.nan` as a
//! number, but the layers that carry sweep values (JSON) turn it into `null`, which means
//! "left out" (for `per_class`, every image). Refused as written, it cannot change meaning.

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::error::Position;

impl From<Marker> for Position {
    fn from(mark: Marker) -> Self {
        Position {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// Positions of the keys and values of one YAML document, by dotted key path
/// (sequence items are numbered from 0: `strategies.2`).
#[derive(Debug, Default)]
pub struct PositionMap {
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
    /// Paths whose value is a mapping or a sequence.
    collections: HashSet<String>,
    /// The first value that serde_yaml reads as NaN or an infinity.
    non_finite: Option<NonFinite>,
}

/// A NaN or infinite number as written in the file (`.nan`, `-.inf`, `!!float .NaN`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFinite {
    /// Dotted key path of the value (`train.lr`, `sweep.target.train.per_class.0`).
    pub path: String,
    /// The scalar as written.
    pub text: String,
    /// Where.
    pub position: Position,
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    /// What the parser expected.
    pub message: String,
    /// Where.
    pub position: Position,
}

impl PositionMap {
    /// Parses `text` and records where each key path is.
    pub fn parse(text: &str) -> Result<Self, SyntaxError> {
        let mut builder = Builder::default();
        Parser::new_from_str(text)
            .load(&mut builder, false)
            .map_err(|e| match unclosed_bracket(text) {
                Some((bracket, position)) => SyntaxError {
                    message: format!("this `{bracket}` is never closed"),
                    position,
                },
                _ => SyntaxError {
                    message: e.info().to_string(),
                    position: (*e.marker()).into(),
                },
            })?;
        match builder.duplicate {
            Some(duplicate) => Err(duplicate),
            None => Ok(builder.map),
        }
    }

    /// The first NaN or infinity in the document, in reading order.
    pub fn non_finite(&self) -> Option<&NonFinite> {
        self.non_finite.as_ref()
    }

    /// Position of the key at `path` (for an unknown or misplaced key).
    pub fn key(&self, path: &str) -> Option<Position> {
        self.keys.get(path).copied()
    }

    /// Position of the value at `path`, or of the nearest enclosing value that is in the file.
    /// A mapping or list is shown by its key: a block mapping's own mark is its first child's.
    pub fn value(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if self.collections.contains(path)
                && let Some(position) = self.keys.get(path)
            {
                return Some(*position);
            }
            if let Some(position) = self.values.get(path) {
                return Some(*position);
            }
            path = &path[..path.rfind('.')?];
        }
    }
}

/// The innermost `[` or `{` left open at the end of the text (quotes and comments skipped):
/// the parser reports an unclosed flow collection where the file ends, not where it opened.
fn unclosed_bracket(text: &str) -> Option<(char, Position)> {
    let mut open: Vec<(char, Position)> = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        for (column, c) in line.chars().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => open.push((
                    c,
                    Position {
                        line: line_index + 1,
                        column: column + 1,
                    },
                )),
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    open.pop()
}

/// Whether serde_yaml (YAML 1.2 core schema, as figment reads the file) takes this scalar for
/// a NaN or an infinity: `.nan`, `.inf`, `+.inf`, `-.inf` in three casings each, plain (or
/// under a tag of the file's own, `!x`), or tagged `!!float` in any style. Other spellings
/// (`nan`, `inf`, `1e999`) and other core tags (`!!str .nan`) are text to it.
fn is_non_finite(
    text: &str,
    style: yaml_rust2::scanner::TScalarStyle,
    tag: Option<&yaml_rust2::parser::Tag>,
) -> bool {
    // `!!float` reaches the parser as handle `tag:yaml.org,2002:` and suffix `float`.
    let core = |t: &yaml_rust2::parser::Tag| t.handle == "!!" || t.handle == "tag:yaml.org,2002:";
    let read_as_number = match tag {
        Some(t) if core(t) => t.suffix == "float",
        _ => style == yaml_rust2::scanner::TScalarStyle::Plain,
    };
    let unsigned = match text.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return false,
        Some(rest) => rest,
        None => text,
    };
    read_as_number
        && (matches!(unsigned, ".inf" | ".Inf" | ".INF")
            || matches!(text, "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN" | ".NAN"))
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    map: PositionMap,
    stack: Vec<Frame>,
    /// The first key found twice in one mapping (YAML forbids it; parsers keep one silently).
    duplicate: Option<SyntaxError>,
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

impl Builder {
    /// Path of the node that starts now, or None when this scalar is a mapping key.
    fn node_path(&mut self, event: &Event, position: Position) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let child = join(path, &next.to_string());
                *next += 1;
                Some(child)
            }
            Some(Frame::Map { path, pending_key }) => match pending_key.take() {
                Some(key) => Some(join(path, &key)),
                None => {
                    let key = match event {
                        Event::Scalar(text, ..) => text.clone(),
                        _ => String::from("?"),
                    };
                    let key_path = join(path, &key);
                    match self.map.keys.get(&key_path) {
                        Some(first) if self.duplicate.is_none() => {
                            self.duplicate = Some(SyntaxError {
                                message: format!(
                                    "key `{key}` appears twice in the same mapping (first on line {})",
                                    first.line
                                ),
                                position,
                            });
                        }
                        Some(_) => {}
                        None => {
                            self.map.keys.insert(key_path, position);
                        }
                    }
                    *pending_key = Some(key);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let position = Position::from(mark);
        match event {
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            Event::Scalar(..)
            | Event::Alias(_)
            | Event::MappingStart(..)
            | Event::SequenceStart(..) => {
                let Some(path) = self.node_path(&event, position) else {
                    return;
                };
                if let Event::Scalar(text, style, _, tag) = &event
                    && self.map.non_finite.is_none()
                    && is_non_finite(text, *style, tag.as_ref())
                {
                    self.map.non_finite = Some(NonFinite {
                        path: path.clone(),
                        text: text.clone(),
                        position,
                    });
                }
                self.map.values.entry(path.clone()).or_insert(position);
                match event {
                    Event::MappingStart(..) => {
                        self.map.collections.insert(path.clone());
                        self.stack.push(Frame::Map {
                            path,
                            pending_key: None,
                        });
                    }
                    Event::SequenceStart(..) => {
                        self.map.collections.insert(path.clone());
                        self.stack.push(Frame::Seq { path, next: 0 });
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_values_in_block_and_flow_style() {
        let map = PositionMap::parse(
            "name: x\ntrain:\n  lr: 0.1\n  steps: 10\nstrategies: [scratch, {transfer_depth: 1}]\n",
        )
        .unwrap();
        assert_eq!(map.key("train.lr"), Some(Position { line: 3, column: 3 }));
        assert_eq!(map.value("train.lr"), Some(Position { line: 3, column: 7 }));
        assert_eq!(
            map.value("strategies.1.transfer_depth"),
            Some(Position {
                line: 5,
                column: 40
            })
        );
        assert_eq!(
            map.key("strategies.1.transfer_depth"),
            Some(Position {
                line: 5,
                column: 24
            })
        );
        // A path below a scalar falls back to the nearest value in the file.
        assert_eq!(
            map.value("train.steps.deeper"),
            Some(Position {
                line: 4,
                column: 10
            })
        );
    }

    #[test]
    fn a_key_twice_in_one_mapping_is_an_error() {
        let error = PositionMap::parse("train: {lr: 1}\nname: x\ntrain: {lr: 2}\n").unwrap_err();
        assert_eq!(error.position, Position { line: 3, column: 1 });
        assert!(
            error.message.contains("first on line 1"),
            "{}",
            error.message
        );
        // The same key in different mappings or list items is fine.
        PositionMap::parse("a: {lr: 1}\nb: {lr: 1}\nc: [{x: 1}, {x: 2}]\n").unwrap();
    }

    #[test]
    fn finds_every_non_finite_number_serde_yaml_reads() {
        // Agreement with serde_yaml (which figment reads the file with), spelling by spelling.
        let spellings = [
            ".nan",
            ".NaN",
            ".NAN",
            ".inf",
            ".Inf",
            ".INF",
            "+.inf",
            "+.Inf",
            "+.INF",
            "-.inf",
            "-.Inf",
            "-.INF",
            "!!float .nan",
            "!!float '.inf'",
            "!!float \"-.Inf\"",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "infinity",
            "+.nan",
            "-.nan",
            ".Nan",
            "++.inf",
            "+-.inf",
            "1e999",
            "-1e999",
            "'.nan'",
            "\".inf\"",
            "!!str .nan",
            "!custom .nan",
            "!custom '.nan'",
            "0.5",
            "1e3",
            "~",
        ];
        for spelling in spellings {
            let document = format!("a: {{b: [1, {spelling}]}}\n");
            let value: serde_yaml::Value = serde_yaml::from_str(&document).unwrap();
            let number = match &value["a"]["b"][1] {
                serde_yaml::Value::Tagged(tagged) => &tagged.value,
                untagged => untagged,
            };
            let serde_yaml_says = number.as_f64().is_some_and(|f| !f.is_finite());
            let found = PositionMap::parse(&document).unwrap().non_finite;
            assert_eq!(found.is_some(), serde_yaml_says, "{spelling}: {number:?}");
            if let Some(found) = found {
                assert_eq!(found.path, "a.b.1");
                // A tagged scalar is marked where its text starts, after the tag.
                let column = 12 + spelling.rfind(' ').map_or(0, |i| i + 1);
                assert_eq!(found.position, Position { line: 1, column }, "{spelling}");
            }
        }
        // Keys are names, not numbers; only the first value is kept.
        let map = PositionMap::parse(".nan: 1\nx: [.inf, .nan]\n").unwrap();
        assert_eq!(map.non_finite().unwrap().text, ".inf");
    }

    #[test]
    fn points_at_the_bracket_that_is_never_closed() {
        let error = PositionMap::parse("train:\n  lr: [1, 2\nname: x\n").unwrap_err();
        assert_eq!(error.position, Position { line: 2, column: 7 });
        assert_eq!(error.message, "this `[` is never closed");
    }
}
