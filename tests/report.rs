//! Reports of a fixed run store (tests/data/store/small: 24 trials of the small sweep over
//! 3 seeds, one failed, one not run), snapshotted with their numbers in every format.

mod common;

use common::Test;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/store/small");

#[test]
fn tables_and_statistics_of_a_fixed_store() {
    let test = Test::new();
    for (format, name) in [
        ("table", "fixture_table"),
        ("md", "fixture_md"),
        ("csv", "fixture_csv"),
        ("json", "fixture_json"),
    ] {
        let ran = test.run(&["report", FIXTURE, "--format", format]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        insta::assert_snapshot!(name, ran.stdout);
    }
    // Uncorrected, three of the fixture's gains are significantly below zero: negative
    // transfer, marked `!`, named in the best list and said in words.
    let ran = test.run(&["report", FIXTURE, "--correction", "none"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout.matches(" hurts at ").count(),
        3,
        "{}",
        ran.stdout
    );
    insta::assert_snapshot!("fixture_table_uncorrected", ran.stdout);
}

#[test]
fn comparing_two_sweeps_matches_their_rows() {
    let test = Test::new();
    let ran = test.run(&["report", FIXTURE, FIXTURE]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    insta::assert_snapshot!("fixture_compared_with_itself", ran.stdout);
    // What applies to one sweep is refused, not silently ignored, and nothing is written.
    for extra in [
        &["--format", "csv"][..],
        &["--format", "json"],
        &["--plots", "figures"],
        &["--html", "page.html"],
    ] {
        let mut args = vec!["report", FIXTURE, FIXTURE];
        args.extend(extra);
        let ran = test.run(&args);
        assert_eq!(ran.code, 2, "{extra:?}: {}", ran.stderr);
        assert!(ran.stdout.is_empty(), "{extra:?}: {}", ran.stdout);
        assert!(ran.stderr.contains("apply to one sweep"), "{}", ran.stderr);
    }
    assert!(!test.join("figures").exists() && !test.join("page.html").exists());
}

#[test]
fn figures_are_written_as_svg_and_png() {
    let test = Test::new();
    let ran = test.run(&["report", FIXTURE, "--plots", "figures"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    for name in ["accuracy-vs-depth", "gain-vs-size", "training-curves"] {
        let svg = std::fs::read_to_string(test.join(&format!("figures/{name}.svg"))).unwrap();
        assert!(svg.contains("<polyline"), "{name} has lines");
        assert!(svg.contains("eval accuracy") || svg.contains("gain") || svg.contains("loss"));
        let png = resvg::tiny_skia::Pixmap::load_png(test.join(&format!("figures/{name}.png")))
            .unwrap_or_else(|e| panic!("{name}.png: {e}"));
        assert!(
            png.width() > 400 && png.height() > 300,
            "{name}.png is drawn at size"
        );
        assert!(inked(&png) > 0.02, "{name}.png is not blank");
    }
}

/// Share of pixels that are not white.
fn inked(pixmap: &resvg::tiny_skia::Pixmap) -> f64 {
    let pixels = pixmap.pixels();
    let inked = pixels
        .iter()
        .filter(|p| p.alpha() > 0 && (p.red() < 240 || p.green() < 240 || p.blue() < 240))
        .count();
    inked as f64 / pixels.len() as f64
}

/// Whether some pixel has this colour (give or take anti-aliasing).
fn has_colour(pixmap: &resvg::tiny_skia::Pixmap, (r, g, b): (u8, u8, u8)) -> bool {
    pixmap.pixels().iter().any(|p| {
        p.alpha() == 255
            && p.red().abs_diff(r) < 8
            && p.green().abs_diff(g) < 8
            && p.blue().abs_diff(b) < 8
    })
}

/// Runs Debian's Chromium headless (as the machine notes say it must run here).
fn chromium(args: &[&str], profile: &std::path::Path) -> std::process::Output {
    let program = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(program).is_file(),
        "{program} is missing: scripts/test installs Debian's chromium"
    );
    std::process::Command::new(program)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs")
}

#[test]
fn the_html_page_renders_in_a_real_browser_with_every_table_and_figure() {
    let test = Test::new();
    let ran = test.run(&["report", FIXTURE, "--html", "page.html"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let page = test.join("page.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script"), "no JavaScript");
    for fetch in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(
            !html.contains(fetch),
            "nothing fetched from the network: {fetch}"
        );
    }
    let url = format!("file://{}", page.display());

    let dom = chromium(&["--dump-dom", &url], &test.join("profile-dom"));
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in ["results", "failed", "facts"] {
        assert!(
            dom.contains(&format!("<table id=\"{id}\"")),
            "table {id} in the DOM"
        );
    }
    // 8 result rows and a header; the failed trial; the spec.
    let results = &dom[dom.find("<table id=\"results\"").unwrap()..];
    let results = &results[..results.find("</table>").unwrap()];
    assert_eq!(results.matches("<tr").count(), 9, "{results}");
    assert!(dom.contains("training loss became NaN or infinite by step 40"));
    assert!(dom.contains("target.train.per_class"), "the spec is shown");
    for figure in ["accuracy-vs-depth", "gain-vs-size", "training-curves"] {
        let at = dom
            .find(&format!("<figure id=\"{figure}\""))
            .unwrap_or_else(|| panic!("figure {figure} in the DOM"));
        let svg = &dom[at..at + dom[at..].find("</figure>").unwrap()];
        assert!(svg.contains("<svg"), "{figure} holds an SVG");
        assert!(svg.matches("<polyline").count() >= 3, "{figure} has lines");
    }

    let shot = test.join("page.png");
    let ran = chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,2600",
            &url,
        ],
        &test.join("profile-shot"),
    );
    let pixmap = resvg::tiny_skia::Pixmap::load_png(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&ran.stderr)
        )
    });
    assert_eq!((pixmap.width(), pixmap.height()), (1400, 2600));
    assert!(inked(&pixmap) > 0.03, "the page is not blank");
    // Lines in the figures' colours: blue (transfer), vermillion (partial_freeze).
    assert!(has_colour(&pixmap, (0, 114, 178)), "blue series drawn");
    assert!(has_colour(&pixmap, (213, 94, 0)), "vermillion series drawn");
}

/// `--metric` chooses what the rows, gains and best rows compare: each row's mean is the mean
/// of its finished trials' metric, the gain is paired by seed, and for ECE the best is the
/// lowest.
#[test]
fn the_metric_option_compares_macro_f1_or_calibration() {
    let test = Test::new().file("spec.yaml", common::SMALL_SWEEP);
    let ran = test.run(&["run", "spec.yaml"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let records = test.records("small");
    for metric in ["macro_f1", "ece"] {
        let ran = test.run(&[
            "report",
            "runs/small",
            "--metric",
            metric,
            "--format",
            "json",
        ]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        let report: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        assert_eq!(report["metric"], metric);
        let rows = report["rows"].as_array().unwrap();
        for row in rows {
            let values: Vec<f64> = (records.values())
                .filter(|r| r["strategies"][0] == row["strategy"])
                .filter(|r| r["freeze_depth"] == row["freeze_depth"])
                .filter(|r| r["transfer_depth"] == row["transfer_depth"])
                .filter(|r| r["axes"]["target.train.per_class"] == row["axes"][0])
                .map(|r| r["eval"][metric].as_f64().unwrap())
                .collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let shown = row["value"]["mean"].as_f64().unwrap();
            assert!(
                (shown - mean).abs() < 1e-12,
                "{metric} {row}: {shown} vs {mean}"
            );
        }
        for best in report["best"].as_array().unwrap() {
            let at = |r: &serde_json::Value| r["value"]["mean"].as_f64().unwrap();
            let here: Vec<f64> = (rows.iter())
                .filter(|r| {
                    // A row belongs at its own setting; scratch also where its axes are null.
                    let own = r["axes"].as_array().unwrap().iter();
                    own.zip(best["axes"].as_array().unwrap())
                        .all(|(a, b)| a == b || (a.is_null() && r["strategy"] == "scratch"))
                })
                .map(at)
                .collect();
            let chosen = best["value"]["mean"].as_f64().unwrap();
            let extreme = match metric {
                "ece" => here.iter().copied().fold(f64::MAX, f64::min),
                _ => here.iter().copied().fold(f64::MIN, f64::max),
            };
            assert_eq!(chosen, extreme, "{metric}: {best}");
        }
    }
    // The page shows each setting's best trial's confusion matrix, from its record.
    let ran = test.run(&[
        "report",
        "runs/small",
        "--html",
        "page.html",
        "--format",
        "json",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let page = std::fs::read_to_string(test.join("page.html")).unwrap();
    assert!(page.contains("Confusion matrices of the best trials"));
    for best in report["best"].as_array().unwrap() {
        let id = best["trial"].as_str().unwrap();
        assert!(page.contains(&format!("(trial {id})")), "{id}");
        let record = &records[id];
        let row: Vec<String> = (record["eval"]["confusion"][1].as_array().unwrap().iter())
            .enumerate()
            .map(|(p, n)| match p {
                1 => format!("<td class=\"n\" style=\"background:#e3f1e3\">{n}</td>"),
                _ => format!("<td class=\"n\">{n}</td>"),
            })
            .collect();
        assert!(
            page.contains(&format!("<tr><th>16</th>{}</tr>", row.join(""))),
            "{id}"
        );
    }
    let csv = test.run(&["report", "runs/small", "--metric", "ece", "--format", "csv"]);
    assert!(
        csv.stdout.starts_with(
            "strategy,t,f,target.train.per_class,finished,failed,missing,ece_mean,ece_std,ece_ci95,"
        ),
        "{}",
        csv.stdout
    );
    let table = test.run(&["report", "runs/small", "--metric", "ece"]);
    assert!(
        table.stdout.contains("gain: ece minus scratch's"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("(lower is better)"),
        "{}",
        table.stdout
    );
}
