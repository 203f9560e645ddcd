//! The data plane's modules form no cycle, at file granularity.
//!
//! Each `.rs` file under `src/` is a node. An edge goes from a file to the file defining an item
//! the first one names by a crate path: `crate::a::b::Item` points at `a/b.rs` (or `a/b/mod.rs`),
//! or at `a.rs` (or `a/mod.rs`) when `b` is an item rather than a module; `super::` and `self::`
//! paths, and paths starting with a child module's name, resolve likewise. A name a module only
//! re-exports (`pub use store::SnapshotStore` in `snapshot/mod.rs`) is followed to the file that
//! defines it, and declaring or re-exporting its own submodules makes no edge from a parent
//! (structure, not dependency) unless it uses the re-exported name itself. Test code
//! (`#[cfg(test)]` items, `tests.rs`, `proptests.rs`) and the binary's `main.rs` are left out;
//! so are comments and literals, so a path in a doc link is no edge. A parent that uses an item
//! of its child, and a child that uses one of its parent (`super::Item`), make a cycle.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    path::{Path, PathBuf},
};

/// A path as written in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    line: usize,
    /// Inline modules the path sits in, inside the file's own module.
    scope: Vec<String>,
    /// As written, e.g. `super::stats::EndpointStats` or `http1::serve`.
    segments: Vec<String>,
    /// For a `use` entry, the name it binds (`None` for globs and `as _`); `None` otherwise.
    binding: Option<String>,
    is_use: bool,
    glob: bool,
    public: bool,
}

/// What parsing one file yields.
#[derive(Debug, Default)]
struct Parsed {
    references: Vec<Reference>,
    /// Inline (non-test) modules, relative to the file's module.
    inline_modules: Vec<Vec<String>>,
    /// Items defined at module level: (inline scope, name).
    items: BTreeSet<(Vec<String>, String)>,
    /// Identifiers in code outside `use` declarations: which imported names the file uses.
    used: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
    /// A literal or lifetime: never part of a path.
    Other,
}

/// Splits Rust source into tokens, with the line each starts on. Comments (doc comments
/// included), strings, chars and numbers never produce identifiers.
fn tokenize(src: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let ident_start = |c: char| c.is_alphabetic() || c == '_';
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br#"…"#: no escapes, ends at a quote and as many hashes.
            let start_line = line;
            let mut j = i;
            while chars[j] != '"' {
                j += 1;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if chars[j] == '\n' {
                    line += 1;
                }
                j += 1;
            }
            out.push((Token::Other, start_line));
            i = j;
        } else if c == '"' || (c == 'b' && next == Some('"')) {
            let start_line = line;
            i += if c == 'b' { 2 } else { 1 };
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if chars.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
            out.push((Token::Other, start_line));
        } else if c == '\'' || (c == 'b' && next == Some('\'')) {
            let j = if c == 'b' { i + 1 } else { i };
            if chars.get(j + 1) == Some(&'\\') {
                // An escaped char literal: '\n', '\'', '\u{…}'.
                let mut k = j + 3;
                while k < chars.len() && chars[k] != '\'' {
                    k += 1;
                }
                i = k + 1;
            } else if chars.get(j + 2) == Some(&'\'') {
                i = j + 3;
            } else {
                // A lifetime or label.
                i = j + 1;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
            }
            out.push((Token::Other, line));
        } else if c == 'r' && next == Some('#') && chars.get(i + 2).is_some_and(|&c| ident_start(c))
        {
            let start = i + 2;
            i = start;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.push((Token::Ident(chars[start..i].iter().collect()), line));
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.push((Token::Ident(chars[start..i].iter().collect()), line));
        } else if c.is_ascii_digit() {
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.push((Token::Other, line));
        } else if c == ':' && next == Some(':') {
            out.push((Token::PathSep, line));
            i += 2;
        } else {
            out.push((Token::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// The number of `#`s of a raw string starting at `i`, if one does.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some(hashes)
}

fn ident(tokens: &[(Token, usize)], i: usize) -> Option<&str> {
    match tokens.get(i) {
        Some((Token::Ident(s), _)) => Some(s),
        _ => None,
    }
}

fn is(tokens: &[(Token, usize)], i: usize, t: &Token) -> bool {
    tokens.get(i).is_some_and(|(x, _)| x == t)
}

fn punct(tokens: &[(Token, usize)], i: usize, c: char) -> bool {
    is(tokens, i, &Token::Punct(c))
}

/// The index just past an attribute starting at `i` (`#[…]` or `#![…]`), and whether it is
/// exactly `cfg(test)`.
fn attribute(tokens: &[(Token, usize)], i: usize) -> Option<(usize, bool)> {
    if !punct(tokens, i, '#') {
        return None;
    }
    let mut j = i + 1;
    if punct(tokens, j, '!') {
        j += 1;
    }
    if !punct(tokens, j, '[') {
        return None;
    }
    let body = j + 1;
    let mut depth = 0;
    while j < tokens.len() {
        if punct(tokens, j, '[') {
            depth += 1;
        } else if punct(tokens, j, ']') {
            depth -= 1;
            if depth == 0 {
                break;
            }
        }
        j += 1;
    }
    let cfg_test = j == body + 4
        && ident(tokens, body) == Some("cfg")
        && punct(tokens, body + 1, '(')
        && ident(tokens, body + 2) == Some("test")
        && punct(tokens, body + 3, ')');
    Some((j + 1, cfg_test))
}

/// The index just past the item starting at `i`: its closing `;` or the `}` closing its body.
fn skip_item(tokens: &[(Token, usize)], mut i: usize) -> usize {
    while let Some((next, _)) = attribute(tokens, i) {
        i = next;
    }
    let mut nesting = 0i32;
    while i < tokens.len() {
        match &tokens[i].0 {
            Token::Punct('(' | '[') => nesting += 1,
            Token::Punct(')' | ']') => nesting -= 1,
            Token::Punct(';') if nesting == 0 => return i + 1,
            Token::Punct('{') if nesting == 0 => {
                let mut depth = 0;
                while i < tokens.len() {
                    if punct(tokens, i, '{') {
                        depth += 1;
                    } else if punct(tokens, i, '}') {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Expands the use tree starting at `i` (after `use`) into `(path, binding, glob, line)`;
/// returns the index past it.
fn use_tree(
    tokens: &[(Token, usize)],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, bool, usize)>,
) -> usize {
    let mut path = prefix.to_vec();
    if is(tokens, i, &Token::PathSep) {
        i += 1; // `use ::std::…`
    }
    loop {
        let line = tokens.get(i).map_or(0, |t| t.1);
        if let Some(name) = ident(tokens, i) {
            // `self` inside braces names the prefix itself.
            if !(name == "self" && !prefix.is_empty() && path.len() == prefix.len()) {
                path.push(name.to_string());
            }
            i += 1;
            if is(tokens, i, &Token::PathSep) {
                i += 1;
                continue;
            }
            let mut binding = path.last().cloned();
            if ident(tokens, i) == Some("as") {
                binding = ident(tokens, i + 1)
                    .filter(|b| *b != "_")
                    .map(str::to_string);
                i += 2;
            }
            out.push((path, binding, false, line));
            return i;
        } else if punct(tokens, i, '*') {
            out.push((path, None, true, line));
            return i + 1;
        } else if punct(tokens, i, '{') {
            i += 1;
            while !punct(tokens, i, '}') && i < tokens.len() {
                i = use_tree(tokens, i, &path, out);
                if punct(tokens, i, ',') {
                    i += 1;
                }
            }
            return i + 1;
        } else {
            return i;
        }
    }
}

/// Whether the `use` at `i` is public in any degree (`pub`, `pub(crate)`, `pub(super)`).
fn public_use(tokens: &[(Token, usize)], i: usize) -> bool {
    if i >= 1 && ident(tokens, i - 1) == Some("pub") {
        return true;
    }
    if i >= 1 && punct(tokens, i - 1, ')') {
        let mut j = i - 1;
        while j > 0 && !punct(tokens, j, '(') {
            j -= 1;
        }
        return j >= 1 && ident(tokens, j - 1) == Some("pub");
    }
    false
}

const ITEM_KEYWORDS: &[&str] = &[
    "fn", "struct", "enum", "trait", "type", "const", "static", "union", "mod",
];

/// Finds the paths, items and inline modules in one file's source.
fn parse(src: &str) -> Parsed {
    let tokens = tokenize(src);
    let mut parsed = Parsed::default();
    // Inline modules we are inside, with the brace depth their body opened at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        if let Some((next, cfg_test)) = attribute(&tokens, i) {
            i = if cfg_test {
                if punct(&tokens, i + 1, '!') {
                    return Parsed::default(); // the whole file is test code
                }
                skip_item(&tokens, next)
            } else {
                next
            };
            continue;
        }
        let scope: Vec<String> = inline.iter().map(|(m, _)| m.clone()).collect();
        let module_level = depth == inline.last().map_or(0, |(_, d)| *d);
        let line = tokens[i].1;
        match &tokens[i].0 {
            Token::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Token::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Token::Ident(kw) if kw == "use" => {
                let public = public_use(&tokens, i);
                let mut entries = Vec::new();
                i = use_tree(&tokens, i + 1, &[], &mut entries);
                for (segments, binding, glob, line) in entries {
                    parsed.references.push(Reference {
                        line,
                        scope: scope.clone(),
                        segments,
                        binding,
                        is_use: true,
                        glob,
                        public,
                    });
                }
            }
            Token::Ident(start)
                if is(&tokens, i + 1, &Token::PathSep)
                    && !(i > 0 && is(&tokens, i - 1, &Token::PathSep))
                    && !(i > 0 && punct(&tokens, i - 1, '$')) =>
            {
                let mut segments = vec![start.clone()];
                parsed.used.insert(start.clone());
                i += 1;
                while is(&tokens, i, &Token::PathSep)
                    && let Some(name) = ident(&tokens, i + 1)
                {
                    segments.push(name.to_string());
                    i += 2;
                }
                parsed.references.push(Reference {
                    line,
                    scope,
                    segments,
                    binding: None,
                    is_use: false,
                    glob: false,
                    public: false,
                });
            }
            Token::Ident(kw) => {
                if module_level
                    && ITEM_KEYWORDS.contains(&kw.as_str())
                    && let Some(name) = ident(&tokens, i + 1)
                {
                    parsed.items.insert((scope.clone(), name.to_string()));
                    if kw == "mod" && punct(&tokens, i + 2, '{') {
                        inline.push((name.to_string(), depth + 1));
                        let mut path = scope.clone();
                        path.push(name.to_string());
                        parsed.inline_modules.push(path);
                    }
                } else if module_level
                    && kw == "macro_rules"
                    && punct(&tokens, i + 1, '!')
                    && let Some(name) = ident(&tokens, i + 2)
                {
                    parsed.items.insert((scope.clone(), name.to_string()));
                }
                parsed.used.insert(kw.clone());
                i += 1;
            }
            _ => i += 1,
        }
    }
    parsed
}

/// The module a source file defines (`a/b.rs` and `a/b/mod.rs` are `a::b`; `lib.rs` the root).
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// An edge with the reference that makes it.
#[derive(Debug, Clone)]
struct Edge {
    line: usize,
    path: String,
}

/// File → file → the first reference making that edge.
type Graph = BTreeMap<String, BTreeMap<String, Edge>>;

/// What the crate's modules define and import, by absolute module path.
#[derive(Default)]
struct Modules {
    file: BTreeMap<Vec<String>, String>,
    items: BTreeSet<(Vec<String>, String)>,
    /// Names brought in by `use`, to the absolute path they stand for.
    bindings: BTreeMap<(Vec<String>, String), Vec<String>>,
    globs: BTreeMap<Vec<String>, Vec<Vec<String>>>,
}

impl Modules {
    /// A path as written in module `scope`, made absolute; `None` if it leaves the crate.
    fn absolute(&self, scope: &[String], segments: &[String]) -> Option<Vec<String>> {
        let mut absolute = match segments[0].as_str() {
            "crate" => Vec::new(),
            "super" | "self" => scope.to_vec(),
            child => {
                let mut m = scope.to_vec();
                m.push(child.to_string());
                if !self.file.contains_key(&m) {
                    return None; // another crate, a type, a local name
                }
                scope.to_vec()
            }
        };
        let mut rest = match segments[0].as_str() {
            "crate" | "self" => &segments[1..],
            _ => segments,
        };
        while rest.first().is_some_and(|s| s == "super") {
            absolute.pop()?;
            rest = &rest[1..];
        }
        absolute.extend(rest.iter().cloned());
        Some(absolute)
    }

    /// The module defining what `path` names: imports are followed to where the item is.
    fn defining(&self, path: &[String], hops: usize) -> Vec<String> {
        let module = (0..=path.len())
            .rev()
            .map(|n| &path[..n])
            .find(|m| self.file.contains_key(*m))
            .expect("the crate root is a module")
            .to_vec();
        let Some(name) = path.get(module.len()) else {
            return module;
        };
        let rest = &path[module.len() + 1..];
        let key = (module.clone(), name.clone());
        if hops > 16 || self.items.contains(&key) {
            return module;
        }
        if let Some(target) = self.bindings.get(&key) {
            let mut next = target.clone();
            next.extend(rest.iter().cloned());
            return self.defining(&next, hops + 1);
        }
        for glob in self.globs.get(&module).into_iter().flatten() {
            let mut child = glob.clone();
            child.push(name.clone());
            let key = (glob.clone(), name.clone());
            if self.file.contains_key(&child)
                || self.items.contains(&key)
                || self.bindings.contains_key(&key)
            {
                child.extend(rest.iter().cloned());
                return self.defining(&child, hops + 1);
            }
        }
        module
    }
}

/// Builds the file graph from `(file relative to src/, source)` pairs.
fn graph(files: &[(PathBuf, String)]) -> Graph {
    let mut modules = Modules::default();
    let mut parsed = Vec::new();
    for (relative, src) in files {
        let name = relative.to_string_lossy().into_owned();
        let module = module_of(relative);
        let p = parse(src);
        for inline in &p.inline_modules {
            let mut path = module.clone();
            path.extend(inline.iter().cloned());
            modules.file.insert(path, name.clone());
        }
        modules.file.insert(module.clone(), name.clone());
        parsed.push((name, module, p));
    }
    // Imports need every module known first: `use child::X` is only a path if `child` is one.
    for (_, module, p) in &parsed {
        for (scope, item) in &p.items {
            let mut m = module.clone();
            m.extend(scope.iter().cloned());
            modules.items.insert((m, item.clone()));
        }
        for r in p.references.iter().filter(|r| r.is_use) {
            let mut scope = module.clone();
            scope.extend(r.scope.iter().cloned());
            let Some(target) = modules.absolute(&scope, &r.segments) else {
                continue;
            };
            if r.glob {
                modules.globs.entry(scope).or_default().push(target);
            } else if let Some(binding) = &r.binding {
                modules.bindings.insert((scope, binding.clone()), target);
            }
        }
    }
    let mut graph = Graph::new();
    for (name, module, p) in &parsed {
        let edges = graph.entry(name.clone()).or_default();
        for r in &p.references {
            let mut scope = module.clone();
            scope.extend(r.scope.iter().cloned());
            // A name imported into this very module is resolved where it is used (or by its
            // `use`); a path through it would point back at this file.
            let Some(absolute) = modules.absolute(&scope, &r.segments) else {
                continue;
            };
            let target_module = modules.defining(&absolute, 0);
            let target = &modules.file[&target_module];
            if target == name {
                continue;
            }
            // Declaring or re-exporting its own submodules is a module's structure; only a name
            // it uses itself makes it depend on them.
            let own = target_module.starts_with(module);
            if r.is_use && own {
                let uses_it =
                    r.binding.as_ref().is_some_and(|b| p.used.contains(b)) || (r.glob && !r.public);
                if !uses_it {
                    continue;
                }
            }
            edges.entry(target.clone()).or_insert_with(|| Edge {
                line: r.line,
                path: r.segments.join("::"),
            });
        }
    }
    graph
}

/// The strongly connected components with more than one node (Tarjan's algorithm).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().expect("v is on the stack");
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found.sort();
    s.found
}

/// One cycle through `component`'s first node, staying inside the component (breadth-first,
/// so it is a shortest one).
fn cycle_through(graph: &Graph, component: &[String]) -> Vec<String> {
    let inside: BTreeSet<&str> = component.iter().map(String::as_str).collect();
    let start = component[0].as_str();
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph[v].keys().map(String::as_str) {
            if !inside.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![start.to_string()];
                let mut at = v;
                while at != start {
                    path.push(at.to_string());
                    at = parent[at];
                }
                path.push(start.to_string());
                path.reverse();
                return path;
            }
            if !parent.contains_key(w) && w != start {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each node")
}

fn describe(graph: &Graph, found: &[Vec<String>]) -> String {
    let mut out = String::new();
    for component in found {
        let _ = writeln!(out, "cycle among {}:", component.join(", "));
        let cycle = cycle_through(graph, component);
        for pair in cycle.windows(2) {
            let edge = &graph[&pair[0]][&pair[1]];
            let _ = writeln!(
                out,
                "  {} → {}  (line {}: {})",
                pair[0], pair[1], edge.line, edge.path
            );
        }
        if component.len() > 2 {
            let _ = writeln!(out, "  every edge among them:");
            for from in component {
                for (to, edge) in &graph[from] {
                    if component.contains(to) {
                        let _ = writeln!(
                            out,
                            "    {from} → {to}  (line {}: {})",
                            edge.line, edge.path
                        );
                    }
                }
            }
        }
    }
    out
}

/// Every library source file, relative to `src/`, with its text; test files and the binary left
/// out.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            let relative = path.strip_prefix(root).expect("under src").to_path_buf();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".rs")
                || matches!(name, "tests.rs" | "proptests.rs")
                || relative == Path::new("main.rs")
            {
                continue;
            }
            let src = std::fs::read_to_string(&path).expect("read source");
            out.push((relative, src));
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out
}

#[test]
fn dataplane_modules_form_no_cycle() {
    let files = sources();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let graph = graph(&files);
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "module cycles in parapet-dataplane (break each by moving what both sides use into a module of its own):\n{}",
        describe(&graph, &found)
    );
}

fn fake(files: &[(&str, &str)]) -> Vec<(PathBuf, String)> {
    files
        .iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect()
}

fn edges(graph: &Graph, from: &str) -> Vec<String> {
    graph[from].keys().cloned().collect()
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_cycle_in_a_fake_crate_is_found_and_printed() {
    let files = fake(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d;"),
        (
            "a/mod.rs",
            "mod inner; pub use inner::X; use crate::b::thing;",
        ),
        ("a/inner.rs", "pub struct X;"),
        ("b.rs", "pub fn thing() { crate::c::Y::new(); }"),
        ("c.rs", "use super::{a::{self, inner::X}};"),
        ("d.rs", "use crate::a::X;"),
    ]);
    let graph = graph(&files);
    let found = cycles(&graph);
    assert_eq!(found, vec![strings(&["a/mod.rs", "b.rs", "c.rs"])]);
    let text = describe(&graph, &found);
    assert!(
        text.contains("a/mod.rs → b.rs  (line 1: crate::b::thing)"),
        "{text}"
    );
    assert!(
        text.contains("b.rs → c.rs  (line 1: crate::c::Y::new)"),
        "{text}"
    );
    assert!(
        text.contains("c.rs → a/mod.rs  (line 1: super::a)"),
        "{text}"
    );
    // d depends on the cycle but is not in it; `a::X` is followed to where X is defined.
    assert_eq!(edges(&graph, "d.rs"), ["a/inner.rs"]);
}

#[test]
fn a_cycle_through_a_name_the_parent_reexports_and_uses_is_found() {
    // balancer ↔ outlier as it was: the handle holds stats, stats hold outlier state, and the
    // outlier detector reads handles.
    let files = fake(&[
        ("lib.rs", "pub mod bal; pub mod out;"),
        (
            "bal/mod.rs",
            "mod stats; pub use stats::Stats; pub struct Handle { s: Stats }",
        ),
        (
            "bal/stats.rs",
            "use crate::out::Outlier; pub struct Stats(Outlier);",
        ),
        (
            "out.rs",
            "use crate::bal::Handle; pub struct Outlier; fn f(_: &Handle) {}",
        ),
    ]);
    let graph = graph(&files);
    let found = cycles(&graph);
    assert_eq!(
        found,
        vec![strings(&["bal/mod.rs", "bal/stats.rs", "out.rs"])]
    );
}

#[test]
fn an_acyclic_fake_crate_passes() {
    let files = fake(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        (
            "a/mod.rs",
            "pub mod x; pub mod y; pub use x::X; pub use self::y::Y;",
        ),
        ("a/x.rs", "use super::y::Y; pub struct X(Y);"),
        ("a/y.rs", "pub struct Y;"),
        ("b.rs", "use crate::a::{X, y::Y};"),
    ]);
    let graph = graph(&files);
    let found = cycles(&graph);
    assert!(found.is_empty(), "{}", describe(&graph, &found));
    assert_eq!(edges(&graph, "a/x.rs"), ["a/y.rs"]);
    assert_eq!(edges(&graph, "b.rs"), ["a/x.rs", "a/y.rs"]);
    // Re-exports of its own children, unused by the parent itself, are no edges.
    assert!(edges(&graph, "a/mod.rs").is_empty());
}

#[test]
fn test_code_comments_and_literals_make_no_edges() {
    let files = fake(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        (
            "a.rs",
            r##"
            //! See [`B`](crate::b::B).
            /* crate::b::B */
            const S: &str = "crate::b::B";
            const R: &str = r#"crate::b::B"#;
            pub fn f<'a>(x: &'a str) -> char { '"' }
            #[cfg(test)]
            mod tests { use crate::b::B; }
            #[cfg(test)]
            use crate::b::B;
            "##,
        ),
        ("b.rs", "use crate::a::f; pub struct B;"),
    ]);
    let graph = graph(&files);
    assert!(edges(&graph, "a.rs").is_empty(), "{:?}", graph["a.rs"]);
    assert_eq!(edges(&graph, "b.rs"), ["a.rs"]);
}

#[test]
fn super_paths_resolve_from_inline_modules_and_nested_files() {
    let files = fake(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        (
            "a/x.rs",
            "mod inner { use super::*; use super::super::y::Y; fn f() { super::super::super::b::g(); } }",
        ),
        ("a/mod.rs", "pub mod x; pub mod y;"),
        ("a/y.rs", "pub struct Y;"),
        ("b.rs", "pub fn g() {}"),
    ]);
    let graph = graph(&files);
    assert_eq!(edges(&graph, "a/x.rs"), ["a/y.rs", "b.rs"]);
}
