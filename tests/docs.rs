//! The manual holds together: the README's test command is the one `.ci/run` runs, every
//! relative link in the README and `docs/` reaches an existing file and heading, and the
//! README stays a manual (details go to `docs/`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The README and every Markdown file under `docs/`.
fn manual() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let dir = root().join("docs");
    let mut docs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Lines outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The anchors GitHub makes of a file's headings: lower case, spaces as `-`, punctuation
/// other than `-` and `_` dropped, `-1`, `-2` ... for repeats.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut out = HashSet::new();
    for (_, line) in prose(text) {
        let Some(title) = line
            .strip_prefix('#')
            .map(|t| t.trim_start_matches('#'))
            .and_then(|t| t.strip_prefix(' '))
        else {
            continue;
        };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        out.insert(anchor);
    }
    out
}

/// The targets of `[text](target)` links on a line.
fn link_targets(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(&after[..end]);
        rest = &after[end..];
    }
    out
}

#[test]
fn the_readme_test_command_is_the_one_ci_runs() {
    let readme = read(&root().join("README.md"));
    let after = readme
        .split_once("Run the tests:")
        .map(|(_, a)| a)
        .expect("the README's quick start says `Run the tests:` before the test command");
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, b)| b.split_once("```"))
        .map(|(b, _)| b.trim())
        .expect("a ```sh block follows `Run the tests:` in the README");
    let ci = read(&root().join(".ci/run"));
    let ci_command = ci
        .split_once("# The README's test command:")
        .map(|(_, a)| a)
        .and_then(|a| a.lines().map(str::trim).find(|l| !l.is_empty()))
        .expect(".ci/run has a line `# The README's test command:` followed by the command");
    // CI adds only `--locked` (the lock file must not change in CI).
    let ci_without_locked: Vec<&str> = ci_command
        .split_whitespace()
        .filter(|w| *w != "--locked")
        .collect();
    let readme_words: Vec<&str> = block.split_whitespace().collect();
    assert_eq!(
        readme_words, ci_without_locked,
        "the README's test command `{block}` and .ci/run's `{ci_command}` differ (beyond \
         `--locked`); change both together"
    );
}

#[test]
fn every_relative_link_in_the_manual_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in manual() {
        let text = read(&file);
        let dir = file.parent().unwrap_or(Path::new("."));
        for (n, line) in prose(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, fragment) = match target.split_once('#') {
                    Some((p, f)) => (p, Some(f)),
                    None => (target, None),
                };
                let dest = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                let name = file.strip_prefix(root()).unwrap_or(&file).display();
                if !dest.exists() {
                    broken.push(format!(
                        "{name}:{n}: `{target}`: no file {}",
                        dest.display()
                    ));
                    continue;
                }
                if let Some(f) = fragment {
                    if dest.extension().is_some_and(|x| x == "md")
                        && !anchors(&read(&dest)).contains(f)
                    {
                        broken.push(format!(
                            "{name}:{n}: `{target}`: no heading with anchor #{f}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} relative links found: is the link parser broken?"
    );
    assert!(
        broken.is_empty(),
        "broken links in the manual:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_readme_stays_a_manual() {
    const MAX_LINES: usize = 450;
    let lines = read(&root().join("README.md")).lines().count();
    assert!(
        lines <= MAX_LINES,
        "README.md has {lines} lines, over {MAX_LINES}: keep it a manual (what callboard is, \
         set-up, concepts, config, protocol, library, deployment, results, dependencies) and \
         move measurements, transcripts and long per-feature write-ups to docs/"
    );
}

#[test]
fn anchors_follow_github() {
    let a = anchors("# Sinks and `[tracing]`\n## Session store (SQLite)\n## Tests\n### Tests\n```\n# not a heading\n```\n");
    for want in [
        "sinks-and-tracing",
        "session-store-sqlite",
        "tests",
        "tests-1",
    ] {
        assert!(a.contains(want), "{want} not in {a:?}");
    }
    assert!(!a.contains("not-a-heading"));
    assert_eq!(
        link_targets("see [a](x.md#y) and [b](z.md)"),
        vec!["x.md#y", "z.md"]
    );
}
