//! The shape of the code, checked: imgd's pipeline reads one way.
//!
//! Reads the crates' own sources (`src/`, `aws/src/`) as text and fails on
//! - a cycle between files, or between top-level modules, through
//!   `use crate::…`/`super::…`/`self::…` trees and inline `crate::…` paths;
//! - an import against the layer order below (each module imports only from
//!   its own layer or below);
//! - a function over [`MAX_FN_LINES`] lines.
//!
//! Test modules (`#[cfg(test)]` items) are left out. It is a text scanner, not
//! a compiler: comments and literals are blanked first, and the code is
//! rustfmt-formatted, which is all it relies on. It is written by hand rather
//! than on `syn` because `syn` with line numbers needs proc-macro2's
//! `span-locations`, which would rebuild every proc macro (and what depends on
//! it) once more for the test build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layer order of each crate, top to bottom; written here once. A module
/// may import from its own layer and any layer below it, never above.
const IMGD_LAYERS: &[&[&str]] = &[
    // The binary: flags -> library call -> print.
    &["cmd"],
    // What runs machines or serves them.
    &["serve", "qemu", "compose"],
    // The pipeline as one call: hash -> cache hit / fetch / build -> commit -> sign.
    &["build"],
    &["sign"],
    &["artifact"],
    &["rootfs"],
    &["debian"],
    // Entries, locks, gc, the remote cache trait.
    &["store"],
    // Profiles and hardware files -> a checked recipe.
    &["config"],
    // The shared words: names, MACs, formats, the manifest.
    &["model"],
    // Leaves: no imgd module below them but each other.
    &["hash", "shelf", "fsutil", "tools", "dirs", "progress", "logbatch", "logfmt"],
];

const AWS_LAYERS: &[&[&str]] = &[
    // The crate root: private modules and the public surface they re-export
    // (coldsnap's lib.rs); no module imports it.
    &[""],
    // Entry points: observe -> plan -> apply.
    &["sync", "prune", "promote", "cache", "placement"],
    // What talks to AWS.
    &["ami", "ebs", "import", "s3", "ssm", "regions", "clients"],
    // Pure helpers and the crate's shared types, its options and its one error.
    &["retry", "output", "model", "options", "error"],
];

/// Pure files: the planners, a pure function of (observed, wanted), import
/// only plain data and helpers, nothing that talks to AWS (module paths; a
/// path allows everything below it).
const AWS_PURE: Pure = &[
    ("sync::plan", &["model", "output", "options", "error", "retry", "sync::request"]),
    ("prune::plan", &["model", "output", "options", "error", "retry", "prune::request"]),
];

/// Rooms inside a top-level module, in the same top-to-bottom order: the
/// netboot server's hall (`server`) joins the PXE room, which asks the boot
/// room, which sends through the HTTP room.
const IMGD_ROOMS: &[(&str, &[&[&str]])] = &[("serve", &[&["local"], &["server"], &["pxe"], &["boot"], &["http"]])];

const MAX_FN_LINES: usize = 100;

/// One Rust source file: where it is and which module it is.
struct File {
    path: PathBuf,
    /// Module path inside its crate: `["store", "manifest"]`; `[]` for the root.
    module: Vec<String>,
    /// The source with comments, literals and test items blanked (newlines kept).
    code: String,
}

struct Crate {
    name: &'static str,
    files: Vec<File>,
    layers: Layers,
    rooms: Rooms,
    pure: Pure,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file below `dir`, named by its module path from `root_file`.
type Layers = &'static [&'static [&'static str]];
type Rooms = &'static [(&'static str, Layers)];
type Pure = &'static [(&'static str, &'static [&'static str])];

fn load_crate(name: &'static str, dir: &Path, root_file: &str, layers: Layers, rooms: Rooms, pure: Pure) -> Crate {
    let mut paths = Vec::new();
    walk(dir, &mut paths);
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let rel = path.strip_prefix(dir).unwrap();
        let mut module: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        let last = module.pop().unwrap();
        let stem = last.trim_end_matches(".rs");
        if rel == Path::new(root_file) {
            module.clear();
        } else if stem != "mod" {
            module.push(stem.to_string());
        }
        // Other binaries' roots (src/main.rs for the library crate) are crates of their own.
        if module.is_empty() && rel != Path::new(root_file) {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let code = without_test_items(&blank_comments_and_literals(&text));
        files.push(File { path, module, code });
    }
    // The crate is what its root declares, down the tree; a file only a test
    // module declares (`#[cfg(test)] mod x;`) is test code, and the other
    // crate's files in the same folder are not this one's.
    let mut kept: BTreeSet<Vec<String>> = BTreeSet::from([Vec::new()]);
    loop {
        let more: BTreeSet<Vec<String>> = files
            .iter()
            .filter(|f| kept.contains(&f.module))
            .flat_map(|f| declared_modules(&f.code).into_iter().map(move |m| child(&f.module, &m)))
            .collect();
        if more.is_subset(&kept) {
            break;
        }
        kept.extend(more);
    }
    files.retain(|f| kept.contains(&f.module));
    Crate { name, files, layers, rooms, pure }
}

fn child(parent: &[String], name: &str) -> Vec<String> {
    let mut m = parent.to_vec();
    m.push(name.to_string());
    m
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Comments become spaces, string and char literals become `""`/`' '` padded
/// with spaces; line breaks stay, so line numbers hold.
fn blank_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if (c[i] == 'r' || (c[i] == 'b' && next == Some('r')))
            && !prev_is_ident(&c, i)
            && raw_string_start(&c, if c[i] == 'b' { i + 1 } else { i }).is_some()
        {
            let at = if c[i] == 'b' { i + 1 } else { i };
            let hashes = raw_string_start(&c, at).unwrap_or(0);
            let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let body_start = at + 2 + hashes;
            for _ in i..body_start {
                out.push(' ');
            }
            i = body_start;
            let close: Vec<char> = close.chars().collect();
            while i < c.len() && c[i..].iter().take(close.len()).ne(close.iter()) {
                out.push(blank(c[i]));
                i += 1;
            }
            for _ in 0..close.len() {
                out.push(' ');
            }
            i += close.len();
            out.push_str("\"\"");
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('a', '\n', '\u{1F}'), or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    out.push('\'');
                    for _ in i + 1..end {
                        out.push(' ');
                    }
                    out.push('\'');
                    i = end + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

/// At `r"` or `r#…#"`: the number of `#`s.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    if c.get(i) != Some(&'r') {
        return None;
    }
    let mut j = i + 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some(j - i - 1)
}

/// Blanks every item behind `#[cfg(test)]` (a test module, a test-only
/// function or import), keeping line breaks.
fn without_test_items(code: &str) -> String {
    let mut c: Vec<char> = code.chars().collect();
    let pat: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + pat.len() <= c.len() {
        if c[i..i + pat.len()] != pat[..] {
            i += 1;
            continue;
        }
        // The item ends at a `;` before any brace, or at the brace matching its first `{`.
        let mut j = i + pat.len();
        let mut depth = 0usize;
        while j < c.len() {
            match c[j] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        for ch in c.iter_mut().take((j + 1).min(code.len())).skip(i) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = j + 1;
    }
    c.into_iter().collect()
}

/// `mod x;` and `mod x {` declared in this file's (non-test) code.
fn declared_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub(crate) ").or_else(|| t.strip_prefix("pub ")).unwrap_or(t);
        if let Some(rest) = t.strip_prefix("mod ") {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.push(name);
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths a file names: each `use` tree expanded, and each inline path
/// that starts with `crate`, `super`, `self` or a child module's name.
/// Returned with the line they stand on.
fn named_paths(code: &str, children: &BTreeSet<String>) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let line_of = |pos: usize| chars[..pos].iter().filter(|&&c| c == '\n').count() + 1;
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_alphabetic() && chars[i] != '_' || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if word == "use" {
            let end = (i..chars.len()).find(|&j| chars[j] == ';').unwrap_or(chars.len());
            let tree: String = chars[i..end].iter().map(|&c| if c.is_whitespace() { ' ' } else { c }).collect();
            for path in expand_use_tree(&tree) {
                out.push((line_of(start), path));
            }
            i = end;
            continue;
        }
        let starts_path = matches!(word.as_str(), "crate" | "super" | "self") || children.contains(&word);
        if !starts_path || chars.get(i) != Some(&':') || chars.get(i + 1) != Some(&':') {
            continue;
        }
        let mut path = vec![word];
        while chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            let s = i + 2;
            let mut e = s;
            while e < chars.len() && is_ident(chars[e]) {
                e += 1;
            }
            if e == s {
                break;
            }
            path.push(chars[s..e].iter().collect());
            i = e;
        }
        out.push((line_of(start), path));
    }
    out
}

/// `a::{b::{c, d}, e as f}` -> `[a,b,c]`, `[a,b,d]`, `[a,e]`.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    fn go(prefix: &[String], t: &str, out: &mut Vec<Vec<String>>) {
        let t = t.trim().trim_start_matches("::");
        if let Some(open) = t.find('{') {
            let head: Vec<String> =
                t[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
            let mut p = prefix.to_vec();
            p.extend(head);
            let inner = &t[open + 1..t.rfind('}').unwrap_or(t.len())];
            let mut depth = 0;
            let mut last = 0;
            for (k, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&p, &inner[last..k], out);
                        last = k + 1;
                    }
                    _ => {}
                }
            }
            go(&p, &inner[last..], out);
        } else {
            let t = t.split(" as ").next().unwrap_or(t);
            let mut p = prefix.to_vec();
            p.extend(t.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "*").map(str::to_string));
            if p.last().is_some_and(|s| s == "self") {
                p.pop();
            }
            if !p.is_empty() {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    // `pub use`, `pub(crate) use` leave a visibility before the tree; strip nothing else.
    go(&[], tree, &mut out);
    out
}

/// A path named in `file`, made absolute within the crate; `None` for other crates.
fn absolute(file: &File, is_dir_module: bool, children: &BTreeSet<String>, path: &[String]) -> Option<Vec<String>> {
    // The module `self` refers to; `super` is its parent.
    let here = file.module.clone();
    let _ = is_dir_module;
    let mut segs = path.iter();
    let first = segs.next()?;
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here,
        "super" => {
            let mut b = here;
            b.pop()?;
            b
        }
        name if children.contains(name) => child(&here, name),
        _ => return None,
    };
    for s in segs {
        if s == "super" {
            base.pop()?;
        } else {
            base.push(s.clone());
        }
    }
    Some(base)
}

/// Which file a module path lands in: the longest prefix that is a file's module.
fn file_of<'a>(krate: &'a Crate, path: &[String]) -> Option<&'a File> {
    (0..=path.len()).rev().find_map(|n| krate.files.iter().find(|f| f.module == path[..n]))
}

/// The top-level module a file belongs to (`""` for the crate root).
fn top(module: &[String]) -> String {
    module.first().cloned().unwrap_or_default()
}

struct Edge {
    from: usize,
    to: usize,
    line: usize,
}

fn edges(krate: &Crate) -> Vec<Edge> {
    let mut out = Vec::new();
    for (fi, f) in krate.files.iter().enumerate() {
        let children: BTreeSet<String> = declared_modules(&f.code).into_iter().collect();
        let is_dir = f.path.ends_with("mod.rs") || f.module.is_empty();
        for (line, path) in named_paths(&f.code, &children) {
            let Some(abs) = absolute(f, is_dir, &children, &path) else { continue };
            let Some(target) = file_of(krate, &abs) else { continue };
            let ti = krate.files.iter().position(|g| std::ptr::eq(g, target)).unwrap_or(fi);
            // A parent naming a child module only to declare or re-export it is the tree, not a use.
            if ti != fi {
                out.push(Edge { from: fi, to: ti, line });
            }
        }
    }
    out
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles(n: usize, adj: &BTreeMap<usize, BTreeSet<usize>>) -> Vec<Vec<usize>> {
    struct T<'a> {
        adj: &'a BTreeMap<usize, BTreeSet<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(t: &mut T, v: usize) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        let succ: Vec<usize> = t.adj.get(&v).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for w in succ {
            match t.index[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on[w] => t.low[v] = t.low[v].min(iw),
                _ => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t =
        T { adj, index: vec![None; n], low: vec![0; n], on: vec![false; n], stack: vec![], next: 0, out: vec![] };
    for v in 0..n {
        if t.index[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Everything wrong with a crate's shape, one line each.
fn problems(krate: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    let es = edges(krate);
    let name = |i: usize| rel(&krate.files[i].path);

    // File cycles.
    let mut adj: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for e in &es {
        adj.entry(e.from).or_default().insert(e.to);
    }
    for comp in cycles(krate.files.len(), &adj) {
        let set: BTreeSet<usize> = comp.iter().copied().collect();
        let witness: Vec<String> = es
            .iter()
            .filter(|e| set.contains(&e.from) && set.contains(&e.to))
            .map(|e| format!("{}:{} -> {}", name(e.from), e.line, name(e.to)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        out.push(format!("{}: file cycle: {}", krate.name, witness.join(", ")));
    }

    // Module cycles and layer order, between top-level modules.
    let tops: Vec<String> = krate.files.iter().map(|f| top(&f.module)).collect::<BTreeSet<_>>().into_iter().collect();
    let ti = |f: usize| tops.iter().position(|t| *t == top(&krate.files[f].module)).unwrap_or(0);
    let mut madj: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for e in &es {
        if ti(e.from) != ti(e.to) && !krate.files[e.from].module.is_empty() {
            madj.entry(ti(e.from)).or_default().insert(ti(e.to));
        }
    }
    for comp in cycles(tops.len(), &madj) {
        let names: Vec<&str> = comp.iter().map(|&i| tops[i].as_str()).collect();
        out.push(format!("{}: module cycle between {}", krate.name, names.join(", ")));
    }
    let layer = |m: &str| krate.layers.iter().position(|l| l.contains(&m));
    for t in &tops {
        if layer(t).is_none() && !t.is_empty() {
            out.push(format!("{}: module `{t}` has no place in the layer order (tests/layering.rs)", krate.name));
        }
    }
    for e in &es {
        let (from, to) = (top(&krate.files[e.from].module), top(&krate.files[e.to].module));
        if krate.files[e.from].module.is_empty() {
            continue; // the crate root declares everything
        }
        if let (Some(a), Some(b)) = (layer(&from), layer(&to)) {
            if b < a {
                out.push(format!("{}:{}: `{from}` imports `{to}`, a layer above it", name(e.from), e.line));
            }
        }
    }

    // Rooms inside a module: the second path segment, ordered like layers.
    for (module, rooms) in krate.rooms {
        let room = |f: usize| {
            let m = &krate.files[f].module;
            (m.len() >= 2 && m[0] == *module).then(|| m[1].clone())
        };
        let order = |r: &str| rooms.iter().position(|l| l.contains(&r));
        for f in 0..krate.files.len() {
            if let Some(r) = room(f).filter(|r| order(r).is_none()) {
                out.push(format!(
                    "{}: room `{module}::{r}` has no place in the room order (tests/layering.rs)",
                    krate.name
                ));
            }
        }
        for e in &es {
            let (Some(a), Some(b)) = (room(e.from), room(e.to)) else { continue };
            if let (Some(x), Some(y)) = (order(&a), order(&b)) {
                if y < x {
                    out.push(format!(
                        "{}:{}: `{module}::{a}` imports `{module}::{b}`, a room above it",
                        name(e.from),
                        e.line
                    ));
                }
            }
        }
    }

    // Pure files import only what they are allowed.
    for e in &es {
        let from = krate.files[e.from].module.join("::");
        let Some((_, allowed)) = krate.pure.iter().find(|(m, _)| *m == from) else { continue };
        let to = &krate.files[e.to].module;
        let ok = allowed.iter().any(|a| {
            let a: Vec<&str> = a.split("::").collect();
            to.len() >= a.len() && to.iter().zip(&a).all(|(x, y)| x == y)
        });
        if !ok {
            out.push(format!("{}:{}: `{from}` is pure and imports `{}`", name(e.from), e.line, to.join("::")));
        }
    }

    // Long functions.
    for f in &krate.files {
        for (line, fn_name, len) in functions(&f.code) {
            if len > MAX_FN_LINES {
                out.push(format!("{}:{line}: fn {fn_name} is {len} lines (at most {MAX_FN_LINES})", rel(&f.path)));
            }
        }
    }
    out
}

/// Every function with a body: (first line, name, lines from `fn` to its closing brace).
fn functions(code: &str) -> Vec<(usize, String, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\n' {
            line += 1;
        }
        let word_start = i == 0 || !is_ident(chars[i - 1]);
        if word_start && chars[i..].starts_with(&['f', 'n', ' ']) {
            let name: String = chars[i + 3..].iter().take_while(|c| is_ident(**c)).collect();
            // Its body: the first `{` before any `;` (a `;` first is a declaration).
            let mut j = i;
            while j < chars.len() && chars[j] != '{' && chars[j] != ';' {
                j += 1;
            }
            if chars.get(j) == Some(&'{') && !name.is_empty() {
                let mut depth = 0;
                let mut k = j;
                while k < chars.len() {
                    match chars[k] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    k += 1;
                }
                let lines = chars[i..k.min(chars.len())].iter().filter(|&&c| c == '\n').count() + 1;
                out.push((line, name, lines));
            }
        }
        i += 1;
    }
    out
}

fn crates() -> Vec<Crate> {
    let r = root();
    vec![
        load_crate("imgd", &r.join("src"), "lib.rs", IMGD_LAYERS, IMGD_ROOMS, &[]),
        load_crate("imgd (binary)", &r.join("src"), "main.rs", &[&["cmd"], &[""]], &[], &[]),
        load_crate("imgd-aws", &r.join("aws/src"), "lib.rs", AWS_LAYERS, &[], AWS_PURE),
    ]
}

#[test]
fn the_code_has_no_import_cycle_no_upward_import_and_no_function_over_100_lines() {
    let mut all = Vec::new();
    for krate in crates() {
        all.extend(problems(&krate));
    }
    assert!(all.is_empty(), "{} problems with the code's shape:\n{}", all.len(), all.join("\n"));
}

/// The checker itself: it must see what it claims to (a check that cannot fail proves nothing).
#[test]
fn the_checker_sees_cycles_upward_imports_and_long_functions() {
    let cleaned =
        blank_comments_and_literals("let s = \"use crate::x;\"; // use crate::y;\nlet c = '{'; use crate::z;");
    let paths = named_paths(&cleaned, &BTreeSet::new());
    assert_eq!(paths, vec![(2, vec!["crate".to_string(), "z".to_string()])]);

    let trees = expand_use_tree("crate::{a::{b, c as d}, e::{self, F}}");
    let trees: Vec<String> = trees.iter().map(|p| p.join("::")).collect();
    assert_eq!(trees, ["crate::a::b", "crate::a::c", "crate::e", "crate::e::F"]);

    let tested = without_test_items("fn a() {}\n#[cfg(test)]\nmod tests {\n use crate::q;\n}\n");
    assert!(!tested.contains("crate::q") && tested.contains("fn a"));

    let body = "x\n".repeat(MAX_FN_LINES);
    let long = format!("fn long() {{\n{body}}}\nfn short() {{ let _ = {{ 1 }}; }}\n");
    let fns = functions(&long);
    assert_eq!(fns.len(), 2);
    assert_eq!((fns[0].1.as_str(), fns[0].2), ("long", MAX_FN_LINES + 2));
    assert_eq!((fns[1].1.as_str(), fns[1].0, fns[1].2), ("short", MAX_FN_LINES + 3, 1));

    // Two files importing each other, and a leaf importing the layer above it.
    let file = |module: &[&str], code: &str| File {
        path: PathBuf::from(format!("{}.rs", module.join("/"))),
        module: module.iter().map(|s| s.to_string()).collect(),
        code: code.to_string(),
    };
    let krate = Crate {
        name: "t",
        files: vec![
            file(&[], "pub mod a; pub mod b;"),
            file(&["a"], "use crate::b::B;\npub struct A;"),
            file(&["b"], "pub struct B;\nfn f() { let _ = crate::a::A; }"),
        ],
        layers: &[&["a"], &["b"]],
        rooms: &[],
        pure: &[],
    };
    let found = problems(&krate);
    assert!(found.iter().any(|p| p.contains("file cycle") && p.contains("a.rs:1 -> b.rs")), "{found:?}");
    assert!(found.iter().any(|p| p.contains("module cycle between a, b")), "{found:?}");
    assert!(found.iter().any(|p| p.contains("b.rs:2: `b` imports `a`, a layer above it")), "{found:?}");

    // A lower room importing a higher one inside the same module.
    let krate = Crate {
        name: "t",
        files: vec![
            file(&[], "pub mod m;"),
            file(&["m"], "pub mod hi; pub mod lo;"),
            file(&["m", "hi"], "use super::lo::L;\npub struct H;"),
            file(&["m", "lo"], "pub struct L;\n\nfn f() { let _ = crate::m::hi::H; }"),
        ],
        layers: &[&["m"]],
        rooms: &[("m", &[&["hi"], &["lo"]])],
        pure: &[],
    };
    let found = problems(&krate);
    assert!(found.iter().any(|p| p.contains("m/lo.rs:3: `m::lo` imports `m::hi`, a room above it")), "{found:?}");
    assert!(!found.iter().any(|p| p.contains("`m::hi` imports")), "a higher room may import a lower one: {found:?}");

    // A pure planner importing what talks to AWS (and what it may import).
    let krate = Crate {
        name: "t",
        files: vec![
            file(&[], "pub mod ami; pub mod model; pub mod sync;"),
            file(&["ami"], "pub fn find() {}"),
            file(&["model"], "pub struct M;"),
            file(&["sync"], "pub mod plan; pub mod request;"),
            file(&["sync", "request"], "pub struct R;"),
            file(
                &["sync", "plan"],
                "use crate::model::M;
use super::request::R;
fn f() { crate::ami::find() }",
            ),
        ],
        layers: &[&["sync"], &["ami"], &["model"]],
        rooms: &[],
        pure: &[("sync::plan", &["model", "sync::request"])],
    };
    let found = problems(&krate);
    assert_eq!(found, ["sync/plan.rs:3: `sync::plan` is pure and imports `ami`"], "{found:?}");
}
