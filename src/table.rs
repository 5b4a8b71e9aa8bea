//! Text tables for people: every column as wide as its widest cell, numbers to the right,
//! as aligned columns for a terminal or as a Markdown table. The plan's trial table and the
//! report's tables are all drawn here, so they line up the same way.

use std::fmt::Write;

/// How a table is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Columns two spaces apart, the header on the first line.
    Plain,
    /// As `Plain`, with a rule of dashes under the header.
    Ruled,
    /// A Markdown table (numeric columns aligned right).
    Markdown,
}

/// The width of each column: its widest cell, header included, in characters.
pub fn widths(header: &[String], lines: &[Vec<String>]) -> Vec<usize> {
    (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// The table of `lines` under `header`; `numeric(c)` says whether column `c` holds numbers.
pub fn render(
    header: &[String],
    lines: &[Vec<String>],
    numeric: impl Fn(usize) -> bool,
    layout: Layout,
) -> String {
    let widths = widths(header, lines);
    let pad = |text: &str, c: usize| {
        let fill = " ".repeat(widths[c] - text.chars().count());
        if numeric(c) {
            format!("{fill}{text}")
        } else {
            format!("{text}{fill}")
        }
    };
    let join = |cells: &[String], separator: &str| {
        (0..header.len())
            .map(|c| pad(&cells[c], c))
            .collect::<Vec<_>>()
            .join(separator)
    };
    let mut out = String::new();
    if layout == Layout::Markdown {
        let _ = writeln!(out, "| {} |", join(header, " | "));
        let rule: Vec<String> = (0..header.len())
            .map(|c| {
                if numeric(c) {
                    format!("{}:", "-".repeat(widths[c] + 1))
                } else {
                    "-".repeat(widths[c] + 2)
                }
            })
            .collect();
        let _ = writeln!(out, "|{}|", rule.join("|"));
        for line in lines {
            let _ = writeln!(out, "| {} |", join(line, " | "));
        }
        return out;
    }
    let _ = writeln!(out, "{}", join(header, "  ").trim_end());
    if layout == Layout::Ruled {
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "{}", rule.join("  "));
    }
    for line in lines {
        let _ = writeln!(out, "{}", join(line, "  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let header = cells(&["name", "n"]);
        let lines = vec![cells(&["scratch", "3"]), cells(&["±", "12"])];
        assert_eq!(widths(&header, &lines), [7, 2]);
        let numeric = |c: usize| c == 1;
        assert_eq!(
            render(&header, &lines, numeric, Layout::Plain),
            "name      n\nscratch   3\n±        12\n"
        );
        assert_eq!(
            render(&header, &lines, numeric, Layout::Ruled),
            "name      n\n-------  --\nscratch   3\n±        12\n"
        );
        assert_eq!(
            render(&header, &lines, numeric, Layout::Markdown),
            "| name    |  n |\n|---------|---:|\n| scratch |  3 |\n| ±       | 12 |\n"
        );
    }
}
