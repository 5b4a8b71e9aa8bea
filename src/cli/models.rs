//! `xferlab models`: each architecture's blocks as a table for people.

use xferlab::data::Input;

/// One architecture's blocks as a table, with its name, input and layouts around it.
pub fn table(summary: &xferlab::model::summary::Summary) -> String {
    let shape = |dims: &[usize]| {
        dims.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("x")
    };
    let input = &summary.input;
    let hidden =
        (summary.model.hidden.as_ref()).map_or(String::new(), |h| format!(", hidden {h:?}"));
    let header = ["block", "inside", "parameters", "output"].map(String::from);
    let mut lines: Vec<Vec<String>> = (summary.blocks.iter())
        .map(|b| {
            vec![
                b.name.clone(),
                b.inside.clone(),
                b.parameters.to_string(),
                shape(&b.output),
            ]
        })
        .collect();
    lines.push(vec![
        "head".into(),
        format!(
            "{}linear {}->classes, new in every trial",
            // Convolutional features that keep their spatial size are pooled first.
            if summary.blocks.last().is_some_and(|b| b.output.len() == 3) {
                "global average pool, "
            } else {
                ""
            },
            summary.features
        ),
        "-".into(),
        "classes".into(),
    ]);
    let input = match input {
        Input::Image(s) => format!("{}x{}x{}", s.channels, s.height, s.width),
        Input::Tokens => format!("{} tokens", summary.blocks[0].output[0]),
    };
    format!(
        "{}{hidden} (input {input}): {} blocks\n{}checkpoints: {}\n\n",
        xferlab::model::import::arch_name(summary.model.arch),
        summary.blocks.len(),
        xferlab::table::render(&header, &lines, |c| c == 2, xferlab::table::Layout::Ruled),
        summary.layouts
    )
}
