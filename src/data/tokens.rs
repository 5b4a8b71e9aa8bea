//! Tokenisation of a text split, once per (split, tokenizer, max_length) and process, with
//! Hugging Face's `tokenizers` from the model's `tokenizer.json`: special tokens added
//! ([CLS] ... [SEP] for BERT), cut to `max_length`, padded to the split's longest text.
//! Training trims each batch to its own longest text, so the padding costs nothing there.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{InputError, Origin, shown};

/// The padding token of BERT vocabularies; padded positions are masked out, so its value
/// never reaches a real token.
const PAD: u32 = 0;

/// Token ids of one split: text `i` is `ids[i * length..(i + 1) * length]`, its first
/// `lengths[i]` real and the rest padding.
#[derive(Debug)]
pub struct Tokens {
    /// Token ids, `length` per text.
    pub ids: Vec<u32>,
    /// Real tokens per text.
    pub lengths: Vec<u32>,
    /// Tokens per text with padding: the longest text's.
    pub length: usize,
}

/// Reads a `tokenizer.json`.
pub fn read_tokenizer(path: &Path) -> Result<Tokenizer, InputError> {
    Tokenizer::from_file(path).map_err(|e| {
        InputError::new(format!("cannot read tokenizer {}: {e}", shown(path)))
            .with_help(
                "give a Hugging Face tokenizer.json (`model.tokenizer`), as model folders hold",
            )
            .with_origin(Origin::File {
                path: path.to_path_buf(),
                position: None,
                line_text: None,
            })
    })
}

/// Tokenises `texts` with the tokenizer at `path`, each cut to `max_length` tokens.
pub fn tokenize(texts: &[String], path: &Path, max_length: usize) -> Result<Tokens, InputError> {
    let mut tokenizer = read_tokenizer(path)?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(|e| InputError::new(format!("max_length {max_length}: {e}")))?;
    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encodings = tokenizer
        .encode_batch(inputs, true)
        .map_err(|e| InputError::new(format!("tokenizer {} failed: {e}", shown(path))))?;
    let length = encodings
        .iter()
        .map(|e| e.get_ids().len())
        .max()
        .unwrap_or(0);
    let mut ids = Vec::with_capacity(encodings.len() * length);
    let mut lengths = Vec::with_capacity(encodings.len());
    for encoding in &encodings {
        let real = encoding.get_ids();
        ids.extend_from_slice(real);
        ids.extend(std::iter::repeat_n(PAD, length - real.len()));
        lengths.push(real.len() as u32);
    }
    Ok(Tokens {
        ids,
        lengths,
        length,
    })
}
