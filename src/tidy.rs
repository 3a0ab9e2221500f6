//! Tidy tests: the library's layer order (ARCHITECTURE.md, "Layers") enforced on the source, so a forbidden dependency fails CI instead of growing a knot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, lowest layer first: a module may use only modules listed
/// before it. ARCHITECTURE.md states the same list (the test below checks that it does).
const LAYERS: &[&str] = &[
    "exit_code",
    "output",
    "format",
    "fingerprint",
    "lock",
    "repo",
    "description",
    "stats",
    "quality",
    "model_fetch",
    "provider",
    "sources",
    "models",
    "cache",
    "sample",
    "manifest",
    "progress",
    "dispatch",
    "pipeline",
    "graph",
    "schedule",
    "judge",
    "export",
    "run",
    "cli",
];

/// Items the crate root defines or re-exports that code may name as `crate::<item>`, with the
/// module they stand for.
const ROOT_ITEMS: &[(&str, &str)] = &[("pipeline_main", "cli"), ("run_main", "cli")];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for the crate root).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src_dir()).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

/// The code of a file without comments and without its `#[cfg(test)]` module (tests may reach
/// anywhere).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal ("http://…") is rare in `crate::` lines; cutting
            // there only hides text after it.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level name used through `crate::` (including `use crate::{a::X, b}` groups).
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level names of the group: at brace depth 0, after `{` or `,`.
            let mut depth = 0;
            let mut expecting = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expecting = true,
                    c if expecting && depth == 0 && !c.is_whitespace() => {
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            names.insert(name);
                        }
                        expecting = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(after);
            if !name.is_empty() {
                names.insert(name);
            }
        }
        rest = after;
    }
    names
}

/// Module → the modules it uses, from the source.
fn dependency_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        if module == "tidy" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        let used = graph.entry(module.clone()).or_default();
        for name in crate_references(&code_of(&text)) {
            let target = ROOT_ITEMS
                .iter()
                .find(|(item, _)| *item == name)
                .map_or(name.clone(), |(_, m)| (*m).to_owned());
            if target != module {
                used.insert(target);
            }
        }
    }
    graph
}

/// The graph as text, one module a line with what it uses (for the closing notes of
/// structural changes: `cargo test -p shaping --lib tidy -- --nocapture`).
fn render(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut out = String::new();
    for module in LAYERS {
        if let Some(used) = graph.get(*module) {
            let used: Vec<&str> = used.iter().map(String::as_str).collect();
            out.push_str(&format!("{module:<12} → {}\n", used.join(", ")));
        }
    }
    out
}

#[test]
fn modules_use_only_lower_layers() {
    let graph = dependency_graph();
    println!("{}", render(&graph));
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut problems = Vec::new();
    for (module, used) in &graph {
        let Some(own) = rank(module) else {
            problems.push(format!(
                "module `{module}` is not in LAYERS (src/tidy.rs and ARCHITECTURE.md): place it"
            ));
            continue;
        };
        for target in used {
            match rank(target) {
                None => problems.push(format!(
                    "`{module}` uses `crate::{target}`, which is not a module in LAYERS: use the module path"
                )),
                Some(other) if other > own => problems.push(format!(
                    "`{module}` uses `{target}`, a higher layer: move the shared piece down or the use up"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn architecture_md_states_the_same_layers() {
    let architecture =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .expect("read ARCHITECTURE.md");
    let stated = architecture
        .lines()
        .find_map(|line| line.strip_prefix("Layer order, lowest first: "))
        .expect("ARCHITECTURE.md has a line 'Layer order, lowest first: …'");
    let stated: Vec<&str> = stated
        .trim_end_matches('.')
        .split(',')
        .map(|m| m.trim().trim_matches('`'))
        .collect();
    assert_eq!(stated, LAYERS, "ARCHITECTURE.md and src/tidy.rs disagree");
}

#[test]
fn references_are_found_in_paths_and_use_groups() {
    let code = "use crate::cache::{CacheKey, X};\nuse crate::{models::Y, provider, sample::{A, B}};\nlet x = crate::fingerprint::sha(1);";
    let found: Vec<String> = crate_references(code).into_iter().collect();
    assert_eq!(
        found,
        ["cache", "fingerprint", "models", "provider", "sample"]
    );
    assert_eq!(
        code_of("use crate::a; // crate::b\n#[cfg(test)]\nmod tests { use crate::c; }"),
        "use crate::a; "
    );
}

/// `(package, feature)` pairs of `cargo tree` over `args` (with `--prefix none -e features`).
fn tree_features(args: &[&str]) -> BTreeSet<(String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args(["tree", "--offline", "--prefix", "none"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (package, rest) = line.split_once(" feature \"")?;
            let feature = rest.split('"').next()?;
            Some((package.to_owned(), feature.to_owned()))
        })
        .collect()
}

#[test]
fn pipeline_builds_reuse_the_test_builds_dependencies() {
    // What `cargo xtask data` (and the dispatch tests) build: the pipelines alone.
    let mut pipelines: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"))
            .expect("read pipelines/")
            .flatten()
            .filter(|e| e.path().join("Cargo.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    pipelines.sort();
    let mut alone: Vec<&str> = vec!["-e", "normal,build,features"];
    for p in &pipelines {
        alone.extend(["-p", p.as_str()]);
    }
    let alone = tree_features(&alone);
    let workspace = tree_features(&["--workspace", "-e", "normal,build,dev,features"]);
    let shared: BTreeSet<&String> = alone.iter().map(|(package, _)| package).collect();
    let missing: Vec<String> = workspace
        .iter()
        .filter(|(package, _)| shared.contains(package) && !package.starts_with("workspace-hack"))
        .filter(|pair| !alone.contains(*pair))
        .map(|(package, feature)| format!("{package} feature \"{feature}\""))
        .collect();
    assert!(
        missing.is_empty(),
        "`cargo test --workspace` builds these with features the pipelines' own build lacks, so \
         every pipeline build compiles them again; add them to workspace-hack/Cargo.toml:\n{}",
        missing.join("\n")
    );
}
