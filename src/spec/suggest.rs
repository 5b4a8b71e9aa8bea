//! "Did you mean": the nearest valid name by edit distance.

/// The valid name nearest to `given`, if it is close enough to be a likely typo.
pub fn nearest<'a>(given: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|name| (strsim::damerau_levenshtein(given, name), *name))
        .filter(|(distance, name)| *distance <= (name.len().max(given.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// A help line: the suggestion when there is one, then every valid name.
pub fn help(given: &str, valid: &[&str], what: &str) -> String {
    let list = valid.join(", ");
    match nearest(given, valid) {
        Some(name) => format!("did you mean `{name}`? {what}: {list}"),
        None => format!("{what}: {list}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let valid = ["optimizer", "lr", "steps", "batch_size"];
        assert_eq!(nearest("optimiser", &valid), Some("optimizer"));
        assert_eq!(nearest("batchsize", &valid), Some("batch_size"));
        assert_eq!(nearest("colour", &valid), None);
        assert_eq!(nearest("lrr", &valid), Some("lr"));
    }
}
