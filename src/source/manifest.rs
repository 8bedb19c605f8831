//! Reading manifests: YAML (multi-document) or JSON text into JSON values,
//! keeping the line and column of every field so that a finding can point at
//! it. Owns parsing only; what the documents mean is the validator's job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::validate::field_path::{join_index, join_key, parent_path};

/// Errors while reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{col}: not valid YAML: {message}")]
    Syntax {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
}

/// A 1-based line and column in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// One document of a manifest file.
#[derive(Clone, Debug)]
pub struct Document {
    /// The file as the user named it (`-` for standard input).
    pub file: String,
    /// Where the document starts.
    pub start: Position,
    /// The document as JSON.
    pub value: Value,
    /// Position of each field, keyed by its path (`spec.headers[0].name`).
    pub positions: HashMap<String, Position>,
}

impl Document {
    /// The position of `path`, or of its nearest ancestor that exists in the
    /// file (a missing required field points at its parent).
    pub fn position_of(&self, path: &str) -> Position {
        let mut candidate = path.to_string();
        loop {
            if let Some(p) = self.positions.get(&candidate) {
                return *p;
            }
            match parent_path(&candidate) {
                Some(parent) => candidate = parent,
                None => return self.start,
            }
        }
    }
}

/// Parses a YAML stream (or JSON text) into documents. Empty documents
/// (for example a trailing `---`) are dropped.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut builder = Builder::new(file);
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|e| ManifestError::Syntax {
            file: file.to_string(),
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
    Ok(builder
        .documents
        .into_iter()
        .filter(|d| !d.value.is_null())
        .collect())
}

/// Reads files, directories (recursively: `.yaml`, `.yml`, `.json`) and
/// `-` (standard input), in a stable order.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestError> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            files.push(path.clone());
        } else if path.is_dir() {
            collect_dir(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    let mut documents = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = if name == "-" {
            std::io::read_to_string(std::io::stdin()).map_err(|source| ManifestError::Read {
                file: name.clone(),
                source,
            })?
        } else {
            std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
                file: name.clone(),
                source,
            })?
        };
        documents.extend(parse_documents(&name, &text)?);
    }
    Ok(documents)
}

/// Whether a file in a directory is a manifest, by its extension.
pub fn is_manifest_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let read_err = |source| ManifestError::Read {
        file: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            collect_dir(&entry, out)?;
        } else if is_manifest_file(&entry) {
            out.push(entry);
        }
    }
    Ok(())
}

/// A container being built: a map waiting for its value, or a list.
enum Frame {
    Map {
        map: Map<String, Value>,
        path: String,
        pending_key: Option<String>,
    },
    Seq {
        items: Vec<Value>,
        path: String,
    },
}

/// Turns parser events into JSON values and a position index.
struct Builder {
    file: String,
    documents: Vec<Document>,
    stack: Vec<Frame>,
    root: Option<Value>,
    positions: HashMap<String, Position>,
    anchors: HashMap<usize, Value>,
    /// Anchor ids of the containers on the stack, to record them when closed.
    anchor_stack: Vec<usize>,
    start: Position,
}

impl Builder {
    fn new(file: &str) -> Self {
        Self {
            file: file.to_string(),
            documents: Vec::new(),
            stack: Vec::new(),
            root: None,
            positions: HashMap::new(),
            anchors: HashMap::new(),
            anchor_stack: Vec::new(),
            start: Position::default(),
        }
    }

    /// The path of the next value, and records its position.
    fn next_path(&mut self, mark: Marker) -> Option<String> {
        let path = match self.stack.last() {
            None => String::new(),
            Some(Frame::Map {
                path, pending_key, ..
            }) => join_key(path, pending_key.as_deref()?),
            Some(Frame::Seq { items, path }) => join_index(path, items.len()),
        };
        // The key's position wins over its value's: findings point at keys.
        self.positions.entry(path.clone()).or_insert(Position {
            line: mark.line(),
            col: mark.col() + 1,
        });
        Some(path)
    }

    /// Places a finished value into its parent, or makes it the root.
    fn place(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Map {
                map, pending_key, ..
            }) => {
                if let Some(key) = pending_key.take() {
                    map.insert(key, value);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
        }
    }

    fn scalar(&mut self, text: String, style: TScalarStyle, anchor: usize, mark: Marker) {
        // A scalar in key position is a key.
        if let Some(Frame::Map { pending_key, .. }) = self.stack.last_mut()
            && pending_key.is_none()
        {
            *pending_key = Some(text);
            let _ = self.next_path(mark);
            return;
        }
        let _ = self.next_path(mark);
        let value = if style == TScalarStyle::Plain {
            resolve_plain(&text)
        } else {
            Value::String(text)
        };
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        self.place(value);
    }
}

/// YAML 1.2 core schema resolution of an unquoted scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Number(i.into());
    }
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => {
                self.root = None;
                self.positions = HashMap::new();
                self.anchors.clear();
                self.start = Position {
                    line: mark.line(),
                    col: mark.col() + 1,
                };
            }
            Event::DocumentEnd => {
                let value = self.root.take().unwrap_or(Value::Null);
                self.documents.push(Document {
                    file: self.file.clone(),
                    start: self.start,
                    value,
                    positions: std::mem::take(&mut self.positions),
                });
            }
            Event::Scalar(text, style, anchor, _tag) => self.scalar(text, style, anchor, mark),
            Event::Alias(id) => {
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                if let Some(Frame::Map { pending_key, .. }) = self.stack.last_mut()
                    && pending_key.is_none()
                {
                    *pending_key = Some(value.as_str().unwrap_or_default().to_string());
                    let _ = self.next_path(mark);
                    return;
                }
                let _ = self.next_path(mark);
                self.place(value);
            }
            Event::MappingStart(anchor, _) => {
                let path = self.next_path(mark).unwrap_or_default();
                self.anchor_stack.push(anchor);
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.next_path(mark).unwrap_or_default();
                self.anchor_stack.push(anchor);
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    path,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let value = match self.stack.pop() {
                    Some(Frame::Map { map, .. }) => Value::Object(map),
                    Some(Frame::Seq { items, .. }) => Value::Array(items),
                    None => Value::Null,
                };
                let anchor = self.anchor_stack.pop().unwrap_or(0);
                if anchor > 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                self.place(value);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_positions() {
        let text = "a: 1\nb:\n  c: \"2\"\n  d: [x, 3.5, true]\n---\n# empty\n---\nk: ~\n";
        let docs = parse_documents("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0].value,
            serde_json::json!({"a": 1, "b": {"c": "2", "d": ["x", 3.5, true]}})
        );
        assert_eq!(docs[0].position_of("b.c"), Position { line: 3, col: 3 });
        assert_eq!(docs[0].position_of("b.d[2]"), Position { line: 4, col: 15 });
        // A missing field points at its nearest existing parent.
        assert_eq!(docs[0].position_of("b.zz.y"), Position { line: 2, col: 1 });
        assert_eq!(docs[1].value, serde_json::json!({"k": null}));
        assert_eq!(docs[1].position_of("k"), Position { line: 8, col: 1 });
    }

    #[test]
    fn json_and_anchors() {
        let docs = parse_documents("f.json", "{\"a\": {\"b\": [1, \"x\"]}}").unwrap();
        assert_eq!(docs[0].value, serde_json::json!({"a": {"b": [1, "x"]}}));
        let docs = parse_documents("f.yaml", "x: &v {p: 1}\ny: *v\n").unwrap();
        assert_eq!(docs[0].value["y"], serde_json::json!({"p": 1}));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_documents("bad.yaml", "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
    }
}
