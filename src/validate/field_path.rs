//! Field paths as findings name them (`spec.headers[0].valueFrom`): how one
//! is built from its parts, and its parent. The schema check builds them;
//! the manifest reader keys each field's position by the same path.

/// Appends a map key to a path.
pub fn join_key(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// Appends a list index to a path.
pub fn join_index(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

/// `a.b[2].c` -> `a.b[2]` -> `a.b` -> `a` -> `` -> None.
pub fn parent_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}
