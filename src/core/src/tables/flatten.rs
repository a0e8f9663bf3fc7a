//! Flattens a JSON config into dotted column names for the `runs` table.

use super::{ColumnType, Value};
use serde_json::Value as Json;

/// `{"a": {"b": 1}, "c": [1, 2]}` → `[("config.a.b", I64 1), ("config.c", Str "[1,2]")]`,
/// sorted by name. Nulls are typed string (see schemas/runs.v1.json).
pub fn flatten(prefix: &str, json: &Json) -> Vec<(String, ColumnType, Value)> {
    let mut out = Vec::new();
    walk(prefix, json, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn walk(name: &str, json: &Json, out: &mut Vec<(String, ColumnType, Value)>) {
    match json {
        Json::Object(map) => {
            for (k, v) in map {
                let child = if name.ends_with('.') { format!("{name}{k}") } else { format!("{name}.{k}") };
                walk(&child, v, out);
            }
        }
        Json::Null => out.push((name.to_string(), ColumnType::String, Value::Null)),
        Json::Bool(b) => out.push((name.to_string(), ColumnType::Bool, Value::Bool(*b))),
        Json::Number(n) => match n.as_i64() {
            Some(i) => out.push((name.to_string(), ColumnType::Int64, Value::I64(i))),
            None => out.push((name.to_string(), ColumnType::Float64, Value::opt_f64(n.as_f64()))),
        },
        Json::String(s) => out.push((name.to_string(), ColumnType::String, Value::Str(s.clone()))),
        Json::Array(_) => out.push((name.to_string(), ColumnType::String, Value::Str(json.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_nested_objects() {
        let j: Json = serde_json::json!({"lr": 0.1, "data": {"dataset": "digits", "classes": [0, 1], "groups": null}, "steps": 10});
        let f = flatten("config.", &j);
        let names: Vec<&str> = f.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["config.data.classes", "config.data.dataset", "config.data.groups", "config.lr", "config.steps"]);
        assert_eq!(f[0].2, Value::Str("[0,1]".into()));
        assert_eq!(f[3].1, ColumnType::Float64);
        assert_eq!(f[4].2, Value::I64(10));
    }
}
