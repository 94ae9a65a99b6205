//! Repository hygiene checked like a test (rust-analyzer's `tidy`): every
//! Rust file opens with a `//!` doc saying what it owns and why, modules do
//! not import each other round a loop, and services do not depend on each
//! other.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    // At run time, not `env!`: a test binary built from another checkout
    // sharing the target directory would otherwise look at that one.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let root = Path::new(&manifest).parent().unwrap();
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(
        files.len() > 30,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text
                .lines()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("//!"))
        })
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:?}"
    );
}

/// The top-level modules of one crate's `src/` and the other top-level
/// modules each refers to (`crate::x`), outside its tests. The crate root
/// (`lib.rs`, `main.rs`) is left out: it declares the modules.
fn module_graph(src: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut refs = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            let after = &code[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                refs.extend(
                    group
                        .split(',')
                        .map(|p| p.trim().split("::").next().unwrap_or("")),
                );
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                refs.push(&after[..end]);
            }
        }
        let entry = graph.entry(top.clone()).or_default();
        for r in refs {
            if !r.is_empty() && r != top && r.starts_with(|c: char| c.is_ascii_lowercase()) {
                entry.push(r.to_owned());
            }
        }
    }
    graph
}

/// A module that, through others, refers back to itself.
fn cycle(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = std::collections::BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if !graph.contains_key(next) {
                    continue; // an item of the crate root, not a module
                }
                if next == start {
                    let mut p = path.clone();
                    p.push(next.clone());
                    return Some(p);
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    None
}

/// The architecture's shape, held: within a crate no two modules import
/// each other (directly or round a loop), and no service crate depends on a
/// sibling service; they share `projection` and `ops` instead.
#[test]
fn no_import_circles_and_no_service_depends_on_another() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let root = Path::new(&manifest).parent().unwrap();
    let crates = [
        "domain",
        "projection",
        "ingest",
        "rebuild",
        "dashboards",
        "write-api",
        "migrations",
        "stack",
        "ops",
        "loadgen",
        "tally",
        "bench",
        "tests",
    ];
    for c in crates {
        let graph = module_graph(&root.join(c).join("src"));
        assert!(
            cycle(&graph).is_none(),
            "{c}: modules import each other round a loop: {}",
            cycle(&graph).unwrap_or_default().join(" → ")
        );
    }
    let services = ["write-api", "ingest", "rebuild", "dashboards"];
    for s in services {
        let toml = std::fs::read_to_string(root.join(s).join("Cargo.toml")).unwrap();
        let deps = toml
            .split("\n[")
            .find(|section| section.starts_with("dependencies]"))
            .unwrap_or_default();
        for other in services.iter().filter(|o| **o != s) {
            assert!(
                !deps.contains(&format!("tally-{other}")),
                "{s} depends on the service crate {other}; share through projection or ops"
            );
        }
    }
}
