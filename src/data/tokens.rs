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
    let failed = |e| InputError::new(format!("tokenizer {} failed: {e}", shown(path)));
    // Only the first tokens are kept, and a long text (an e-mail with an attachment) costs
    // its whole length to tokenise: each text is tokenised from a prefix first, kept when
    // the prefix goes on past the last kept token's word (tokens never span whitespace),
    // and tokenised whole otherwise.
    let prefixes: Vec<&str> = texts.iter().map(|t| prefix(t, max_length * 32)).collect();
    let mut encodings = tokenizer
        .encode_batch(prefixes.clone(), true)
        .map_err(failed)?;
    let whole: Vec<usize> = (0..texts.len())
        .filter(|&i| !decided_by_prefix(&encodings[i], prefixes[i], &texts[i]))
        .collect();
    let again: Vec<&str> = whole.iter().map(|&i| texts[i].as_str()).collect();
    let again = tokenizer.encode_batch(again, true).map_err(failed)?;
    for (i, encoding) in whole.into_iter().zip(again) {
        encodings[i] = encoding;
    }
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

/// The text's first `bytes` bytes at most, cut at a character boundary.
fn prefix(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether tokenising `prefix` (of `text`) gave what `text` gives: all of it, or a cut that
/// falls in a later word than the last token kept.
fn decided_by_prefix(encoding: &tokenizers::Encoding, prefix: &str, text: &str) -> bool {
    if prefix.len() == text.len() {
        return true;
    }
    // Special tokens have empty offsets; the last real token's end is where its word may go on.
    let kept_end = (encoding.get_offsets().iter())
        .map(|&(_, end)| end)
        .max()
        .unwrap_or(0);
    prefix[kept_end.min(prefix.len())..].contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokenising from prefixes gives exactly what tokenising whole texts gives, on real
    /// e-mails (long ones with attachments among them) and on words longer than any prefix.
    #[test]
    fn prefixes_give_the_whole_texts_tokens() {
        let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let path = assets.join("all-minilm-l6-v2/tokenizer.json");
        let mut texts: Vec<String> = std::fs::read_dir(assets.join("spam-assassin/test/spam"))
            .unwrap()
            .take(300)
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        texts.push(format!("{} after one very long word", "x".repeat(5000)));
        texts.push(format!("short start {}", "y".repeat(5000)));
        assert!(texts.iter().filter(|t| t.len() > 24 * 32).count() > 100);
        for max_length in [24, 128] {
            let ours = tokenize(&texts, &path, max_length).unwrap();
            let mut tokenizer = read_tokenizer(&path).unwrap();
            tokenizer.with_padding(None);
            tokenizer
                .with_truncation(Some(TruncationParams {
                    max_length,
                    ..Default::default()
                }))
                .unwrap();
            let whole = tokenizer.encode_batch(texts.clone(), true).unwrap();
            for (i, encoding) in whole.iter().enumerate() {
                let length = ours.lengths[i] as usize;
                let row = &ours.ids[i * ours.length..i * ours.length + length];
                assert_eq!(
                    row,
                    encoding.get_ids(),
                    "text {i} at max_length {max_length}"
                );
            }
        }
    }
}
