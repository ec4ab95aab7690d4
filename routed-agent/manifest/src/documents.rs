//! Text to documents: a YAML stream (or a JSON text, or a stream of JSON values) into one
//! `serde_json::Value` per non-empty document.
//!
//! The YAML side drives yaml-rust2's event parser and builds the values itself, rather than
//! going through its `YamlLoader`, so that it can stop at the first problem, tell which
//! document and line it is in, refuse aliases before they are expanded (no "billion laughs"),
//! refuse duplicate keys, and bound the nesting depth.

use crate::ManifestError;
use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

/// Deeper than any manifest (managedFields go about 15 levels down); bounds the work and the
/// recursion of dropping a value.
pub(crate) const MAX_DEPTH: usize = 100;

/// One non-empty document of the input.
#[derive(Debug)]
pub(crate) struct Document {
    /// 1-based, counting the empty documents too (the n-th `---` section).
    pub index: usize,
    /// Where its content starts, when known.
    pub line: Option<usize>,
    pub value: Value,
}

pub(crate) fn documents(text: &str) -> Result<Vec<Document>, ManifestError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    unprintable(text)?;
    let first = text.trim_start().chars().next();
    if matches!(first, Some('{') | Some('[')) {
        match json_documents(text) {
            Ok(docs) => return Ok(docs),
            // Not JSON after all: flow-style YAML (`{apiVersion: v1, ...}`) starts the same
            // way. If YAML cannot read it either, the JSON error is the helpful one when the
            // text does not even start with one JSON value.
            Err(json_error) => {
                return yaml_documents(text).map_err(|yaml_error| match json_error {
                    ManifestError::Parse { document: 1, .. } => json_error,
                    _ => yaml_error,
                })
            }
        }
    }
    yaml_documents(text)
}

/// YAML allows only printable characters (and tab, CR, LF); yaml-rust2 would take a NUL
/// for the end of the input and silently drop the rest, so they are refused up front.
fn unprintable(text: &str) -> Result<(), ManifestError> {
    let printable = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | '\u{85}' | '\u{feff}')
            || !(c.is_control() || c == '\u{fffe}' || c == '\u{ffff}')
    };
    let Some((at, c)) = text.char_indices().find(|&(_, c)| !printable(c)) else {
        return Ok(());
    };
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Err(ManifestError::Parse {
        document: document_of_line(before),
        line: Some(line),
        column: Some(before[line_start..].chars().count() + 1),
        message: format!("unprintable character U+{:04X}", u32::from(c)),
    })
}

/// Which document the end of `before` is in, counting `---` lines (where no parser could
/// tell: the rest of the text is not read).
fn document_of_line(before: &str) -> usize {
    let mut document = 1;
    let mut content = false;
    for line in before.split('\n') {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']));
        if marker {
            if content {
                document += 1;
            }
            content = true;
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            content = true;
        }
    }
    document
}

/// A JSON text, or several JSON values one after the other (what `kubectl get -o json` of
/// several objects concatenated looks like).
fn json_documents(text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, value) in stream.enumerate() {
        let index = i + 1;
        match value {
            Ok(Value::Null) => {}
            Ok(value) => docs.push(Document {
                index,
                line: None,
                value,
            }),
            Err(e) => {
                let full = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let message = full.strip_suffix(&suffix).unwrap_or(&full);
                return Err(ManifestError::Parse {
                    document: index,
                    line: (e.line() > 0).then_some(e.line()),
                    column: (e.column() > 0).then_some(e.column()),
                    message: format!("invalid JSON: {message}"),
                });
            }
        }
    }
    Ok(docs)
}

enum Frame {
    Seq(Vec<Value>),
    /// The mapping so far and, between a key and its value, the key.
    Map(Map<String, Value>, Option<String>),
}

/// A finished node on its way into its parent.
enum Node {
    /// With its text as written, which is what a mapping key becomes.
    Scalar(String, Value),
    Collection(Value),
}

struct Builder {
    stack: Vec<Frame>,
    root: Option<(Value, Option<usize>)>,
    /// Where the node being built at the top level started.
    root_line: Option<usize>,
    /// Documents started so far.
    index: usize,
    in_document: bool,
    docs: Vec<Document>,
}

fn yaml_documents(text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        stack: Vec::new(),
        root: None,
        root_line: None,
        index: 0,
        in_document: false,
        docs: Vec::new(),
    };
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(e) => {
                let message = format!("invalid YAML: {}", e.info());
                return Err(b.error_at(e.marker(), message));
            }
        };
        let starts_node = matches!(
            event,
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..)
        );
        if starts_node && b.stack.is_empty() {
            b.root_line = Some(mark.line());
        }
        match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart => {}
            Event::DocumentStart => {
                b.index += 1;
                b.in_document = true;
                b.root = None;
            }
            Event::DocumentEnd => {
                b.in_document = false;
                if let Some((value, line)) = b.root.take() {
                    if !value.is_null() {
                        b.docs.push(Document {
                            index: b.index,
                            line,
                            value,
                        });
                    }
                }
            }
            Event::Alias(_) => {
                return Err(b.error_at(
                    &mark,
                    "YAML aliases (*name) are not supported: write the value out in full",
                ));
            }
            Event::Scalar(raw, style, _anchor, tag) => {
                let value = scalar(&raw, style, tag.as_ref()).map_err(|m| b.error_at(&mark, m))?;
                b.put(Node::Scalar(raw, value), &mark)?;
            }
            Event::SequenceStart(_, _) => {
                b.open(&mark)?;
                b.stack.push(Frame::Seq(Vec::new()));
            }
            Event::MappingStart(_, _) => {
                b.open(&mark)?;
                b.stack.push(Frame::Map(Map::new(), None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let value = match b.stack.pop() {
                    Some(Frame::Seq(items)) => Value::Array(items),
                    Some(Frame::Map(map, _)) => Value::Object(map),
                    None => return Err(b.error_at(&mark, "unbalanced YAML collection")),
                };
                b.put(Node::Collection(value), &mark)?;
            }
        }
    }
    Ok(b.docs)
}

impl Builder {
    fn error_at(&self, mark: &Marker, message: impl Into<String>) -> ManifestError {
        // Between two documents, a problem belongs to the one that was about to start.
        let document = if self.in_document {
            self.index
        } else {
            self.index + 1
        };
        ManifestError::Parse {
            document,
            line: Some(mark.line()),
            column: Some(mark.col() + 1),
            message: message.into(),
        }
    }

    /// A sequence or mapping starts: it cannot be a key, and it must not nest too deep.
    fn open(&self, mark: &Marker) -> Result<(), ManifestError> {
        if let Some(Frame::Map(_, None)) = self.stack.last() {
            return Err(self.error_at(
                mark,
                "a mapping key must be a scalar, not a list or a mapping",
            ));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error_at(mark, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn put(&mut self, node: Node, mark: &Marker) -> Result<(), ManifestError> {
        let problem = match self.stack.last_mut() {
            None => {
                let value = match node {
                    Node::Scalar(_, v) | Node::Collection(v) => v,
                };
                self.root = Some((value, self.root_line));
                return Ok(());
            }
            Some(Frame::Seq(items)) => {
                items.push(match node {
                    Node::Scalar(_, v) | Node::Collection(v) => v,
                });
                return Ok(());
            }
            Some(Frame::Map(map, key @ None)) => match node {
                // A scalar key of any type is its text, `80: x` has the key "80".
                Node::Scalar(raw, _) if map.contains_key(&raw) => {
                    format!("duplicate mapping key {raw:?}")
                }
                Node::Scalar(raw, _) => {
                    *key = Some(raw);
                    return Ok(());
                }
                // `open` refuses these before they are built.
                Node::Collection(_) => {
                    "a mapping key must be a scalar, not a list or a mapping".to_string()
                }
            },
            Some(Frame::Map(map, key @ Some(_))) => {
                let value = match node {
                    Node::Scalar(_, v) | Node::Collection(v) => v,
                };
                if let Some(k) = key.take() {
                    map.insert(k, value);
                }
                return Ok(());
            }
        };
        Err(self.error_at(mark, problem))
    }
}

/// A YAML 1.2 core-schema scalar, as yaml-rust2's loader resolves it: quoted ones are
/// strings; plain ones are null, booleans, integers, floats or strings by their text, or by
/// a `!!` tag.
fn scalar(raw: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if style != TScalarStyle::Plain {
        return Ok(Value::String(raw.to_string()));
    }
    let yaml = match tag {
        Some(tag) if tag.handle == "tag:yaml.org,2002:" => match tag.suffix.as_str() {
            "str" => return Ok(Value::String(raw.to_string())),
            "bool" => match raw {
                "true" | "True" | "TRUE" => Yaml::Boolean(true),
                "false" | "False" | "FALSE" => Yaml::Boolean(false),
                _ => return Err(format!("{raw:?} is not a !!bool")),
            },
            "int" => match raw.parse::<i64>() {
                Ok(i) => Yaml::Integer(i),
                Err(_) => return Err(format!("{raw:?} is not a !!int")),
            },
            "float" => Yaml::Real(raw.to_string()),
            "null" => match raw {
                "~" | "null" | "" => Yaml::Null,
                _ => return Err(format!("{raw:?} is not a !!null")),
            },
            _ => return Ok(Value::String(raw.to_string())),
        },
        Some(_) => return Ok(Value::String(raw.to_string())),
        None => Yaml::from_str(raw),
    };
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(_) => {
            let number = yaml.as_f64().and_then(Number::from_f64);
            match number {
                Some(n) => Value::Number(n),
                None => return Err(format!("{raw:?} is not a finite number")),
            }
        }
        Yaml::String(s) => Value::String(s),
        // Not produced by `from_str` nor above.
        _ => Value::String(raw.to_string()),
    })
}
