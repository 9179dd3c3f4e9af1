//! `docs/conformance.md` stays true: every file its tables name for a normative statement still
//! cites that statement, and every row names at least one test. (Code moves between files; a
//! table left behind then points readers at files that no longer say a word about the rule.)

use std::path::Path;

/// The rows of the document's tables: (statement, files named).
fn rows(doc: &str) -> Vec<(String, Vec<String>)> {
    doc.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `MQTT-")?;
            let (number, files) = rest.split_once("` | ")?;
            let files = files.strip_suffix(" |")?;
            Some((
                format!("MQTT-{number}"),
                files.split(", ").map(str::to_owned).collect(),
            ))
        })
        .collect()
}

/// Whether `text` cites `statement` (and not only a longer number that starts with it:
/// `MQTT-3.3.1-1` is not cited by `MQTT-3.3.1-10`).
fn cites(text: &str, statement: &str) -> bool {
    text.match_indices(statement).any(|(at, _)| {
        !text[at + statement.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn every_file_the_conformance_tables_name_cites_its_statement() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/conformance.md")).expect("read the doc");
    let rows = rows(&doc);
    assert!(
        rows.len() > 100,
        "the tables were read: {} rows",
        rows.len()
    );
    let mut untrue = Vec::new();
    for (statement, files) in &rows {
        for file in files {
            match std::fs::read_to_string(root.join(file)) {
                Ok(text) if cites(&text, statement) => {}
                Ok(_) => untrue.push(format!("{statement}: {file} does not cite it")),
                Err(e) => untrue.push(format!("{statement}: {file}: {e}")),
            }
        }
        let tested = files.iter().any(|file| {
            file.contains("tests/")
                || std::fs::read_to_string(root.join(file))
                    .is_ok_and(|text| text.contains("#[test]") || text.contains("#[tokio::test]"))
        });
        if !tested {
            untrue.push(format!("{statement}: no test among {files:?}"));
        }
    }
    assert!(
        untrue.is_empty(),
        "docs/conformance.md is out of date:\n{}",
        untrue.join("\n")
    );
}

#[test]
fn a_longer_statement_number_is_not_a_citation() {
    assert!(cites("see [MQTT-3.3.1-1].", "MQTT-3.3.1-1"));
    assert!(!cites("see [MQTT-3.3.1-10].", "MQTT-3.3.1-1"));
    assert!(cites("[MQTT-3.3.1-10] and [MQTT-3.3.1-1]", "MQTT-3.3.1-1"));
}
