//! The core's modules import one way: no module reaches, through
//! `crate::` paths, a module that reaches it back. (That the core imports
//! nothing of the cluster the compiler keeps: `tidings-cluster` depends on
//! this crate.)
//!
//! Reads `src/`: each top-level module (its file and its folder) and the
//! `crate::<module>` paths in its code, comments left out. Fails with the
//! modules of each cycle found.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The text of every `.rs` file under `path` (a file or a folder).
fn sources(path: &Path) -> Vec<String> {
    if path.is_file() {
        return vec![fs::read_to_string(path).unwrap()];
    }
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries {
            out.extend(sources(&entry.unwrap().path()));
        }
    }
    out
}

/// `source` without its comments (line comments, doc comments included).
fn code(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules of `known` that `code` names as `crate::<module>`, also
/// inside `use crate::{a, b::c}`.
fn uses(code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|item| item.trim().split("::").next().unwrap_or(""))
                .collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            vec![&rest[..end]]
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| known.contains(*n))
                .map(str::to_owned),
        );
    }
    found
}

/// The cycles of `graph`: its strongly connected components of more than
/// one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        next: usize,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(walk: &mut Walk<'a>, v: &'a str) {
        walk.index.insert(v, walk.next);
        walk.low.insert(v, walk.next);
        walk.next += 1;
        walk.stack.push(v);
        for w in &walk.graph[v] {
            let w = w.as_str();
            if !walk.index.contains_key(w) {
                visit(walk, w);
                let low = walk.low[v].min(walk.low[w]);
                walk.low.insert(v, low);
            } else if walk.stack.contains(&w) {
                let low = walk.low[v].min(walk.index[w]);
                walk.low.insert(v, low);
            }
        }
        if walk.low[v] == walk.index[v] {
            let mut component = Vec::new();
            while let Some(w) = walk.stack.pop() {
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                walk.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            visit(&mut walk, v);
        }
    }
    walk.found
}

#[test]
fn the_cores_modules_import_one_way() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let known: BTreeSet<String> = fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .filter(|name| name != "lib")
        .collect();
    assert!(known.len() > 10, "read the core's modules: {known:?}");
    let graph: BTreeMap<String, BTreeSet<String>> = known
        .iter()
        .map(|module| {
            let mut texts = sources(&src.join(format!("{module}.rs")));
            texts.extend(sources(&src.join(module)));
            let mut deps: BTreeSet<String> = texts
                .iter()
                .flat_map(|text| uses(&code(text), &known))
                .collect();
            deps.remove(module);
            (module.clone(), deps)
        })
        .collect();
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "modules that import each other (directly or through others): {found:?}\n\
         the graph: {graph:#?}"
    );
}

#[test]
fn a_cycle_is_found() {
    let known: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", "use crate::b::X;"),
        ("b", "use crate::{c::Y, d};"),
        (
            "c",
            "fn f() { crate::a::g() } // crate::d is only a comment",
        ),
        ("d", ""),
    ]
    .into_iter()
    .map(|(m, text)| (m.to_owned(), uses(&code(text), &known)))
    .collect();
    assert_eq!(graph["c"], ["a".to_owned()].into(), "comments are left out");
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
}
