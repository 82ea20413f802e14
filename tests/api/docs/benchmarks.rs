//! The benchmarks page opens with one table of every target the benches
//! judge: its latest figure, the verdict and a link to the run it comes
//! from. Each row is held here to that run further down the page, so the
//! summary cannot drift from the runs: a row whose run is a table of the
//! `perf` bench (`measure | policyhub | baseline | ratio | target`) must
//! find its measure and target there, with the same figure and verdict; a
//! row whose run is told otherwise (a bench of its own, a digest of runs)
//! must find every number of its figure, and its verdict, in that run's
//! section. And every measure those `perf` tables judge has a row.

use std::collections::HashSet;
use std::path::Path;

/// The columns of the summary.
const SUMMARY: [&str; 5] = ["measure", "latest figure", "target", "verdict", "run"];

/// The verdicts a row may give, as the bench writes them.
const VERDICTS: [&str; 3] = ["met", "NOT met", "noisy"];

#[test]
fn the_benchmarks_summary_matches_its_runs() {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/benchmarks.md"),
    )
    .unwrap();
    // Right under the title: before the page's first section.
    let top = page.split("\n## ").next().unwrap_or_default();
    let summary = tables(top)
        .into_iter()
        .next()
        .expect("the benchmarks page opens with its summary table");
    assert_eq!(summary.header, SUMMARY, "the summary's columns");
    assert!(!summary.rows.is_empty(), "the summary has no row");

    let mut wrong = Vec::new();
    let mut linked = Vec::new();
    for row in &summary.rows {
        let [measure, figure, target, verdict, run] = row.as_slice() else {
            wrong.push(format!("a summary row of {} cells: {row:?}", row.len()));
            continue;
        };
        let place = format!("summary row {measure:?} ({target})");
        if !VERDICTS.contains(&verdict.as_str()) {
            wrong.push(format!(
                "{place}: verdict {verdict:?} is none of {VERDICTS:?}"
            ));
        }
        let Some(anchor) = run
            .split_once("](#")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(anchor, _)| anchor)
        else {
            wrong.push(format!("{place}: the run {run:?} links to no section"));
            continue;
        };
        let Some(section) = section(&page, anchor) else {
            wrong.push(format!("{place}: no heading #{anchor}"));
            continue;
        };
        if !linked.contains(&anchor) {
            linked.push(anchor);
        }
        let runs = perf_tables(&section);
        let checked = if runs.is_empty() {
            told(&section, figure, verdict)
        } else {
            tabled(&runs, measure, figure, target, verdict)
        };
        if let Err(error) = checked {
            wrong.push(format!("{place}, run #{anchor}: {error}"));
        }
    }

    // Every measure a linked run's table judges is in the summary.
    let summarised: HashSet<&str> = summary.rows.iter().map(|row| row[0].as_str()).collect();
    for anchor in linked {
        for table in perf_tables(&section(&page, anchor).unwrap_or_default()) {
            for row in table.full_rows() {
                let measure = table.cell(row, "measure");
                if table.cell(row, "target") != "—" && !summarised.contains(measure) {
                    wrong.push(format!(
                        "run #{anchor} judges {measure:?}, which the summary lacks"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/src/benchmarks.md: the summary and the runs disagree:\n{}",
        wrong.join("\n")
    );
}

/// A row held to a `perf` table: the one row of `measure` (of the full run,
/// where the table names runs) judged against `target`'s bound, whose
/// verdict is `verdict` and whose ratio, or own figure for a bound that is
/// not a ratio, is `figure`. What `target` says after a ratio's bound
/// (`≤ 0.5× etcd`) names the baseline: each of its words of four letters or
/// more is in the row's baseline.
fn tabled(
    runs: &[Table],
    measure: &str,
    figure: &str,
    target: &str,
    verdict: &str,
) -> Result<(), String> {
    let (bound, baseline) = match target.split_once('×') {
        Some((factor, rest)) => (format!("{factor}×"), rest.trim()),
        None => (target.to_owned(), ""),
    };
    let judged = format!("{bound}: ");
    let found: Vec<(&Table, &Vec<String>, &str)> = runs
        .iter()
        .flat_map(|table| table.full_rows().map(move |row| (table, row)))
        .filter(|(table, row)| table.cell(row, "measure") == measure)
        .filter_map(|(table, row)| {
            table
                .cell(row, "target")
                .split("; ")
                .find_map(|part| part.strip_prefix(&judged))
                .map(|given| (table, row, given))
        })
        .collect();
    let [(table, row, given)] = found.as_slice() else {
        return Err(format!(
            "{} rows of this measure judged {bound}, not one",
            found.len()
        ));
    };
    if given != &verdict {
        return Err(format!("the run says {given:?}, the summary {verdict:?}"));
    }
    let column = if bound.contains('×') {
        "ratio"
    } else {
        "policyhub"
    };
    let run_figure = table.cell(row, column);
    if run_figure != figure {
        return Err(format!(
            "the run's {column} is {run_figure:?}, the summary's figure {figure:?}"
        ));
    }
    let named = table.cell(row, "baseline").to_lowercase();
    for word in baseline
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.chars().count() >= 4)
    {
        if !named.contains(&word.to_lowercase()) {
            return Err(format!(
                "the target names {word:?}, which the run's baseline {named:?} does not"
            ));
        }
    }
    Ok(())
}

/// A row held to a run told in a section of its own: each number of
/// `figure`, and `verdict`, are in it.
fn told(section: &str, figure: &str, verdict: &str) -> Result<(), String> {
    let given = numbers(section);
    let missing: Vec<String> = numbers(figure)
        .into_iter()
        .filter(|number| !given.contains(number))
        .collect();
    if !missing.is_empty() {
        return Err(format!("the run's section never gives {missing:?}"));
    }
    let words: Vec<&str> = section
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    let said = words.windows(verdict.split(' ').count()).any(|window| {
        window
            .iter()
            .copied()
            .eq(verdict.split(' ').filter(|word| !word.is_empty()))
    });
    if !said {
        return Err(format!("the run's section never says {verdict:?}"));
    }
    Ok(())
}

/// The numbers written in `text`: `0.27`, `10,000`, `4.12` of `4.12×`.
fn numbers(text: &str) -> HashSet<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = HashSet::new();
    let mut index = 0;
    while index < chars.len() {
        if !chars[index].is_ascii_digit() {
            index += 1;
            continue;
        }
        let start = index;
        while index < chars.len()
            && (chars[index].is_ascii_digit()
                || (matches!(chars[index], '.' | ',')
                    && chars.get(index + 1).is_some_and(char::is_ascii_digit)))
        {
            index += 1;
        }
        found.insert(chars[start..index].iter().collect());
    }
    found
}

/// A Markdown table: its header's cells and its rows' cells.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// The cell of `row` in the column whose header starts with `column`
    /// (`baseline` for `baseline (named)`), or "".
    fn cell<'a>(&self, row: &'a [String], column: &str) -> &'a str {
        self.header
            .iter()
            .position(|name| name.starts_with(column))
            .and_then(|index| row.get(index))
            .map_or("", String::as_str)
    }

    /// The rows of the full run: all of them, but where the table names
    /// each row's run (`full` or `quick`).
    fn full_rows(&self) -> impl Iterator<Item = &Vec<String>> {
        let named = self.header.iter().any(|name| name == "run");
        self.rows
            .iter()
            .filter(move |row| !named || self.cell(row, "run") == "full")
    }
}

/// The tables of `text`, outside code blocks.
fn tables(text: &str) -> Vec<Table> {
    let mut found: Vec<Table> = Vec::new();
    let mut in_block = false;
    let mut in_table = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        }
        let Some(cells) = cells(line).filter(|_| !in_block) else {
            in_table = false;
            continue;
        };
        match found.last_mut() {
            Some(table) if in_table => {
                if !cells
                    .iter()
                    .all(|cell| cell.trim_matches([':', '-']).is_empty())
                {
                    table.rows.push(cells);
                }
            }
            _ => {
                found.push(Table {
                    header: cells,
                    rows: Vec::new(),
                });
                in_table = true;
            }
        }
    }
    found
}

/// The cells of a table's line, `| a | b |`.
fn cells(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(
        inner
            .split('|')
            .map(|cell| cell.trim().to_owned())
            .collect(),
    )
}

/// The tables of `section` the `perf` bench prints.
fn perf_tables(section: &str) -> Vec<Table> {
    tables(section)
        .into_iter()
        .filter(|table| {
            ["measure", "policyhub", "baseline", "ratio", "target"]
                .iter()
                .all(|column| table.header.iter().any(|name| name.starts_with(column)))
        })
        .collect()
}

/// What lies under the heading of `page` whose anchor is `anchor`, up to
/// the next heading.
fn section(page: &str, anchor: &str) -> Option<String> {
    let mut lines = page.lines();
    let mut in_block = false;
    let heading = |line: &str, in_block: bool| !in_block && line.starts_with('#');
    lines.by_ref().find(|line| {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        }
        heading(line, in_block) && super::anchors(line).first().map(String::as_str) == Some(anchor)
    })?;
    let mut text = String::new();
    for line in lines {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        }
        if heading(line, in_block) {
            break;
        }
        text.push_str(line);
        text.push('\n');
    }
    Some(text)
}
