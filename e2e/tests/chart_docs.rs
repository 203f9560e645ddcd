//! The chart's README lists every documented value of `values.yaml`, with its type,
//! default and description, and nothing else.

use anyhow::{Result, anyhow, bail, ensure};
use parapet_e2e::chart::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// The README's values table

const TABLE_START: &str = "<!-- values-table:start -->";
const TABLE_END: &str = "<!-- values-table:end -->";

/// A documented key of values.yaml: its dotted path and its `# --` description.
struct Documented {
    path: String,
    description: String,
}

/// Reads the `# -- description` comments (continued by following `#` lines) above keys of
/// values.yaml, helm-docs style.
fn documented_keys(values_yaml: &str) -> Vec<Documented> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<String> = None;
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(text) = trimmed.strip_prefix("# --") {
            pending = Some(text.trim().to_string());
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            if let Some(p) = &mut pending {
                p.push(' ');
                p.push_str(text.trim());
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        if let Some(description) = pending.take() {
            let path = stack
                .iter()
                .map(|(_, k)| k.as_str())
                .collect::<Vec<_>>()
                .join(".");
            out.push(Documented { path, description });
        }
    }
    out
}

fn value_at<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(values, |v, k| v.get(k))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "int or null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// Leaf paths of values.yaml (scalars, lists, empty objects).
fn leaf_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(child, &path, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

fn values_table(values_yaml: &str) -> Result<String> {
    let values: Value = serde_yaml_ng::from_str(values_yaml)?;
    let mut table = String::from("| Key | Type | Default | Description |\n|---|---|---|---|\n");
    for d in documented_keys(values_yaml) {
        let v = value_at(&values, &d.path)
            .ok_or_else(|| anyhow!("documented key {} is not in values.yaml", d.path))?;
        let mut default = serde_json::to_string(v)?;
        if default.len() > 80 {
            default = "see values.yaml".into();
        } else {
            default = format!("`{default}`");
        }
        let row = format!(
            "| `{}` | {} | {} | {} |\n",
            d.path,
            type_name(v),
            default.replace('|', "\\|"),
            d.description.replace('|', "\\|")
        );
        table.push_str(&row);
    }
    Ok(table)
}

#[test]
fn readme_values_table_matches_values_yaml() -> Result<()> {
    let values_yaml = std::fs::read_to_string(chart_dir().join("values.yaml"))?;
    let documented: Vec<String> = documented_keys(&values_yaml)
        .into_iter()
        .map(|d| d.path)
        .collect();

    // Every value is documented, itself or through an enclosing key.
    let values: Value = serde_yaml_ng::from_str(&values_yaml)?;
    let mut leaves = Vec::new();
    leaf_paths(&values, "", &mut leaves);
    let undocumented: Vec<&String> = leaves
        .iter()
        .filter(|leaf| {
            !documented
                .iter()
                .any(|d| *leaf == d || leaf.starts_with(&format!("{d}.")))
        })
        .collect();
    ensure!(
        undocumented.is_empty(),
        "values without a `# --` comment in values.yaml: {undocumented:?}"
    );

    let expected = values_table(&values_yaml)?;
    let readme_path = chart_dir().join("README.md");
    let readme = std::fs::read_to_string(&readme_path)?;
    let (before, rest) = readme
        .split_once(TABLE_START)
        .ok_or_else(|| anyhow!("{} has no {TABLE_START}", readme_path.display()))?;
    let (current, after) = rest
        .split_once(TABLE_END)
        .ok_or_else(|| anyhow!("{} has no {TABLE_END}", readme_path.display()))?;
    if current.trim() != expected.trim() {
        if std::env::var_os("PARAPET_UPDATE_CHART_README").is_some() {
            std::fs::write(
                &readme_path,
                format!("{before}{TABLE_START}\n{expected}{TABLE_END}{after}"),
            )?;
            return Ok(());
        }
        bail!(
            "the values table in {} is stale; rewrite it with \
             `PARAPET_UPDATE_CHART_README=1 cargo test -p parapet-e2e --test chart readme`. \
             Expected:\n{expected}",
            readme_path.display()
        );
    }
    // And every top-level key shows in the table.
    for key in values.as_object().into_iter().flatten().map(|(k, _)| k) {
        ensure!(
            current.contains(&format!("| `{key}")),
            "top-level key {key} is missing from the README table"
        );
    }
    Ok(())
}
