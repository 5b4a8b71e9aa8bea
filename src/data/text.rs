//! Text datasets: `text_folder` (one UTF-8 document per file in `root/<class>/`, split as
//! image folders are) and `text_table` (a CSV file with a header row, or JSONL, one text per
//! row with its label in another column). Classes are numbered by the train split: a folder's
//! class names sorted, a table's `labels` in the order given (else sorted); a test split with
//! a class the train split lacks is refused, never renumbered.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::folder::{self, Kind};
use crate::error::{InputError, Origin, Position, shown};
use crate::spec::{DatasetSpec, Split};

/// One split of a text dataset in memory.
#[derive(Debug)]
pub struct Texts {
    /// Class names; a class's label is its position.
    pub classes: Vec<String>,
    /// The documents.
    pub texts: Vec<String>,
    /// Each document's label.
    pub labels: Vec<u32>,
}

/// An error about one line of a data file.
fn at_line(path: &Path, line: usize, text: &str, message: String) -> InputError {
    InputError::new(message).with_origin(Origin::File {
        path: path.to_path_buf(),
        position: Some(Position { line, column: 1 }),
        line_text: Some(text.chars().take(200).collect()),
    })
}

fn at_file(path: &Path, message: String) -> InputError {
    InputError::new(message).with_origin(Origin::File {
        path: path.to_path_buf(),
        position: None,
        line_text: None,
    })
}

/// One split of a `text_folder` dataset.
pub fn folder(root: &Path, split: Split, holdout: Option<f64>) -> Result<Texts, InputError> {
    let listing = folder::list(root, split, holdout, Kind::Texts)?;
    let classes = match split {
        Split::Train => listing.classes.clone(),
        Split::Test => folder::list(root, Split::Train, holdout, Kind::Texts)?.classes,
    };
    let mut texts = Vec::with_capacity(listing.files.len());
    let mut labels = Vec::with_capacity(listing.files.len());
    for (path, label) in &listing.files {
        let name = &listing.classes[*label as usize];
        let Some(label) = classes.iter().position(|c| c == name) else {
            return Err(at_file(
                path,
                format!(
                    "class `{name}` of the test split is not a class of the train split ({})",
                    classes.join(", ")
                ),
            ));
        };
        let bytes = std::fs::read(path)
            .map_err(|e| at_file(path, format!("cannot read {}: {e}", shown(path))))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            at_file(
                path,
                format!(
                    "{} is not UTF-8 text (at byte {})",
                    shown(path),
                    e.utf8_error().valid_up_to()
                ),
            )
            .with_help("convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or remove it")
        })?;
        if text.trim().is_empty() {
            return Err(at_file(path, format!("{} holds no text", shown(path))));
        }
        texts.push(text);
        labels.push(label as u32);
    }
    Ok(Texts {
        classes,
        texts,
        labels,
    })
}

/// One row of a table: its line in the file, text and label as written.
struct Row {
    line: usize,
    raw: String,
    text: String,
    label: String,
}

/// One split of a `text_table` dataset.
pub fn table(spec: &DatasetSpec, name: &str, split: Split) -> Result<Texts, InputError> {
    let file = spec
        .file
        .as_deref()
        .ok_or_else(|| InputError::new(format!("text_table dataset `{name}` needs a `file`")))?;
    let train = read_rows(file, spec)?;
    let classes = match &spec.labels {
        Some(labels) => labels.clone(),
        None => {
            let mut all: Vec<String> = train.iter().map(|r| r.label.clone()).collect();
            all.sort();
            all.dedup();
            all
        }
    };
    let (path, rows) = match (split, &spec.test_file, spec.holdout) {
        (Split::Train, None, Some(fraction)) => (file, held_out(train, fraction, Split::Train)),
        (Split::Test, None, Some(fraction)) => (file, held_out(train, fraction, Split::Test)),
        (Split::Train, _, _) => (file, train),
        (Split::Test, Some(test), _) => (test.as_path(), read_rows(test, spec)?),
        (Split::Test, None, None) => {
            return Err(
                InputError::new(format!("text_table dataset `{name}` has no test split"))
                    .with_help(
                        "give `test_file`, or `holdout: 0.2` to hold out a fifth of each class",
                    ),
            );
        }
    };
    let mut texts = Vec::with_capacity(rows.len());
    let mut labels = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(label) = classes.iter().position(|c| *c == row.label) else {
            let whose = if spec.labels.is_some() {
                "`labels`"
            } else {
                "the train split's labels"
            };
            return Err(at_line(
                path,
                row.line,
                &row.raw,
                format!(
                    "label `{}` is not one of {whose} ({})",
                    row.label,
                    classes.join(", ")
                ),
            ));
        };
        texts.push(row.text);
        labels.push(label as u32);
    }
    Ok(Texts {
        classes,
        texts,
        labels,
    })
}

/// The rows of a CSV or JSONL file, each with a non-empty text and a label.
fn read_rows(path: &Path, spec: &DatasetSpec) -> Result<Vec<Row>, InputError> {
    let text_field = spec.text_field.as_deref().unwrap_or("text");
    let label_field = spec.label_field.as_deref().unwrap_or("label");
    let bytes = std::fs::read(path)
        .map_err(|e| at_file(path, format!("cannot read {}: {e}", shown(path))))?;
    let content = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        at_line(path, line, "", format!("{} is not UTF-8 text", shown(path)))
    })?;
    let lines: Vec<&str> = content.lines().collect();
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let rows = match extension.to_ascii_lowercase().as_str() {
        "csv" => csv_rows(path, &content, text_field, label_field)?,
        "jsonl" | "ndjson" => jsonl_rows(path, &lines, text_field, label_field)?,
        _ => {
            return Err(at_file(
                path,
                format!("{} is neither .csv nor .jsonl", shown(path)),
            ));
        }
    };
    for row in &rows {
        if row.text.trim().is_empty() {
            return Err(at_line(
                path,
                row.line,
                lines.get(row.line - 1).copied().unwrap_or(""),
                format!("the text (`{text_field}`) is empty"),
            ));
        }
    }
    if rows.is_empty() {
        return Err(at_file(path, format!("{} has no rows", shown(path))));
    }
    Ok(rows)
}

fn csv_rows(
    path: &Path,
    content: &str,
    text_field: &str,
    label_field: &str,
) -> Result<Vec<Row>, InputError> {
    let mut reader = csv::Reader::from_reader(content.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| at_line(path, 1, "", format!("cannot read the header row: {e}")))?
        .clone();
    let column = |field: &str| {
        headers.iter().position(|h| h == field).ok_or_else(|| {
            let first = content.lines().next().unwrap_or("");
            at_line(
                path,
                1,
                first,
                format!("no column `{field}` in the header row"),
            )
            .with_help(format!(
                "its columns are {}; name the text's and the label's with `text_field` and `label_field`",
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let (text, label) = (column(text_field)?, column(label_field)?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            let raw = content.lines().nth(line.saturating_sub(1)).unwrap_or("");
            at_line(path, line, raw, format!("not a CSV row: {e}"))
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let raw = content.lines().nth(line.saturating_sub(1)).unwrap_or("");
        rows.push(Row {
            line,
            raw: raw.to_string(),
            text: record.get(text).unwrap_or("").to_string(),
            label: record.get(label).unwrap_or("").trim().to_string(),
        });
    }
    Ok(rows)
}

fn jsonl_rows(
    path: &Path,
    lines: &[&str],
    text_field: &str,
    label_field: &str,
) -> Result<Vec<Row>, InputError> {
    let mut rows = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| at_line(path, line, raw, format!("not a JSON object: {e}")))?;
        let field = |name: &str| -> Result<String, InputError> {
            match value.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    Ok(v.to_string())
                }
                Some(_) => Err(at_line(
                    path,
                    line,
                    raw,
                    format!("field `{name}` is not a string or a number"),
                )),
                None => Err(at_line(path, line, raw, format!("no field `{name}`"))
                    .with_help("name the text's and the label's fields with `text_field` and `label_field`")),
            }
        };
        rows.push(Row {
            line,
            raw: raw.to_string(),
            text: field(text_field)?,
            label: field(label_field)?,
        });
    }
    Ok(rows)
}

/// One side of a `holdout`: in each class, the `fraction` of rows whose texts hash lowest is
/// the test split (so a text repeated in the file never sits on both sides).
fn held_out(rows: Vec<Row>, fraction: f64, split: Split) -> Vec<Row> {
    let mut by_label: std::collections::BTreeMap<String, Vec<([u8; 32], Row)>> = Default::default();
    for row in rows {
        let hash: [u8; 32] = Sha256::digest(row.text.as_bytes()).into();
        by_label
            .entry(row.label.clone())
            .or_default()
            .push((hash, row));
    }
    let mut chosen = Vec::new();
    for (_, mut ranked) in by_label {
        ranked.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.line.cmp(&b.1.line)));
        let held =
            ((ranked.len() as f64 * fraction).round() as usize).clamp(1, ranked.len().max(2) - 1);
        chosen.extend(match split {
            Split::Test => ranked
                .into_iter()
                .take(held)
                .map(|(_, r)| r)
                .collect::<Vec<_>>(),
            Split::Train => ranked.into_iter().skip(held).map(|(_, r)| r).collect(),
        });
    }
    chosen.sort_by_key(|r| r.line);
    chosen
}
