//! A TOML document as a tree of values that remember where they are in the text, so that
//! every message can name the line. Built with serde from `toml`'s own parser: no second
//! parser, and nothing here knows the configuration's schema.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// `toml`'s private protocol for spans (the one `toml::Spanned` uses), spoken by hand because
/// not everything has a span: the implicit table of a dotted key (`a.b = 1`) and the key of
/// the one-entry map a date-time is passed as have none, and `toml::Spanned` refuses those.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_FIELDS: &[&str] = &[
    "$__serde_spanned_private_start",
    "$__serde_spanned_private_end",
    "$__serde_spanned_private_value",
];
/// The key under which `toml` passes a date-time through serde.
const DATETIME_KEY: &str = "$__toml_private_datetime";

/// A value and where it is in the text. An implicit table (`a` in `a.b = 1`) takes the span
/// of its first key, so that it still has a line.
#[derive(Debug, Clone)]
pub(crate) struct Sp<T> {
    span: Range<usize>,
    value: T,
}

impl<T> Sp<T> {
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }
    pub fn get_ref(&self) -> &T {
        &self.value
    }
}

/// A table key and its byte range in the text (none for `toml`'s internal keys).
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub name: String,
    pub span: Option<Range<usize>>,
}

/// One TOML value.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Sp<Node>>),
    /// Entries in document order.
    Table(Vec<(Key, Sp<Node>)>),
}

impl Node {
    /// The TOML name of this value's type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Node::String(_) => "a string",
            Node::Integer(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Boolean(_) => "a boolean",
            Node::Datetime(_) => "a date-time",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }

    /// The type, with the value itself for short scalars: `an integer (5)`.
    pub fn describe(&self) -> String {
        let shown = match self {
            Node::String(s) if s.chars().count() <= 40 => format!("{s:?}"),
            Node::Integer(i) => i.to_string(),
            Node::Float(f) => f.to_string(),
            Node::Boolean(b) => b.to_string(),
            Node::Datetime(d) => d.clone(),
            _ => return self.type_name().to_string(),
        };
        format!("{} ({shown})", self.type_name())
    }
}

/// Parses TOML text into a spanned tree.
///
/// # Errors
/// `toml`'s syntax error: its message and byte range.
pub(crate) fn parse(text: &str) -> Result<Sp<Node>, (String, Option<Range<usize>>)> {
    toml::from_str::<Sp<Node>>(text).map_err(|e| (e.message().to_string(), e.span()))
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_string(),
            span: None,
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Key, A::Error> {
        let (mut start, mut end, mut name) = (None, None, None);
        while let Some(field) = a.next_key::<String>()? {
            match field.as_str() {
                f if f == SPANNED_FIELDS[0] => start = Some(a.next_value::<usize>()?),
                f if f == SPANNED_FIELDS[1] => end = Some(a.next_value::<usize>()?),
                f if f == SPANNED_FIELDS[2] => name = Some(a.next_value::<String>()?),
                other => {
                    return Err(serde::de::Error::unknown_field(other, SPANNED_FIELDS));
                }
            }
        }
        let name = name.ok_or_else(|| serde::de::Error::missing_field(SPANNED_FIELDS[2]))?;
        let span = match (start, end) {
            (Some(s), Some(e)) => Some(s..e),
            _ => None,
        };
        Ok(Key { name, span })
    }
}

impl<'de> Deserialize<'de> for Sp<Node> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sp<Node>, D::Error> {
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, SpVisitor)
    }
}

/// Reads either the span protocol (start, end, value) or, for values `toml` has no span
/// for, the value itself.
struct SpVisitor;

impl SpVisitor {
    fn bare(value: Node) -> Sp<Node> {
        Sp { span: 0..0, value }
    }
}

impl<'de> Visitor<'de> for SpVisitor {
    type Value = Sp<Node>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Sp<Node>, E> {
        NodeVisitor.visit_str(v).map(Self::bare)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Sp<Node>, E> {
        NodeVisitor.visit_i64(v).map(Self::bare)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Sp<Node>, E> {
        NodeVisitor.visit_u64(v).map(Self::bare)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Sp<Node>, E> {
        NodeVisitor.visit_f64(v).map(Self::bare)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Sp<Node>, E> {
        NodeVisitor.visit_bool(v).map(Self::bare)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Sp<Node>, A::Error> {
        NodeVisitor.visit_seq(a).map(Self::bare)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Sp<Node>, A::Error> {
        let Some(first) = a.next_key::<Key>()? else {
            return Ok(Self::bare(Node::Table(Vec::new())));
        };
        if first.span.is_none() && first.name == SPANNED_FIELDS[0] {
            // The span protocol: start, end, then the value.
            let start = a.next_value::<usize>()?;
            let (mut end, mut value) = (start, None);
            while let Some(field) = a.next_key::<String>()? {
                match field.as_str() {
                    f if f == SPANNED_FIELDS[1] => end = a.next_value::<usize>()?,
                    f if f == SPANNED_FIELDS[2] => value = Some(a.next_value::<Node>()?),
                    other => return Err(serde::de::Error::unknown_field(other, SPANNED_FIELDS)),
                }
            }
            let value = value.ok_or_else(|| serde::de::Error::missing_field(SPANNED_FIELDS[2]))?;
            return Ok(Sp {
                span: start..end.max(start),
                value,
            });
        }
        // A table without a span: read it as any other, placed at its first key.
        let span = first.span.clone().unwrap_or(0..0);
        let value = NodeVisitor::table_from(first, a)?;
        Ok(Sp { span, value })
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Integer(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Integer)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Boolean(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = a.next_element::<Sp<Node>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        match a.next_key::<Key>()? {
            Some(first) => NodeVisitor::table_from(first, a),
            None => Ok(Node::Table(Vec::new())),
        }
    }
}

impl NodeVisitor {
    /// The rest of a map whose first key was read already.
    fn table_from<'de, A: MapAccess<'de>>(first: Key, mut a: A) -> Result<Node, A::Error> {
        if first.span.is_none() && first.name == DATETIME_KEY {
            return Ok(Node::Datetime(a.next_value::<String>()?));
        }
        let mut entries = vec![(first, a.next_value::<Sp<Node>>()?)];
        while let Some(key) = a.next_key::<Key>()? {
            let value = a.next_value::<Sp<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_types() {
        let text =
            "a = 1\n[t]\nd = 1979-05-27T07:32:00Z\nx = [1.5, true]\n[[w]]\ny = { z = 'q' }\n";
        let root = parse(text).unwrap();
        let Node::Table(entries) = root.get_ref() else {
            panic!("root is not a table")
        };
        let names: Vec<_> = entries.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["a", "t", "w"]);
        let (tkey, t) = &entries[1];
        assert_eq!(line_of(text, tkey.span.clone().unwrap().start), 2);
        let Node::Table(t) = t.get_ref() else {
            panic!("t is not a table")
        };
        assert!(matches!(t[0].1.get_ref(), Node::Datetime(d) if d.starts_with("1979")));
        assert_eq!(line_of(text, t[0].1.span().start), 3);
        assert_eq!(line_of(text, t[1].1.span().start), 4);
        let (_, w) = &entries[2];
        assert_eq!(line_of(text, w.span().start), 5);
    }

    #[test]
    fn dotted_keys_and_implicit_tables() {
        let text = "a.b = 1\n[t.u]\nx.y = 2\n";
        let root = parse(text).unwrap();
        let Node::Table(entries) = root.get_ref() else {
            panic!("root is not a table")
        };
        let (k, a) = &entries[0];
        assert_eq!(k.name, "a");
        assert_eq!(line_of(text, a.span().start), 1);
        assert!(matches!(a.get_ref(), Node::Table(t) if t[0].0.name == "b"));
        let (k, t) = &entries[1];
        assert_eq!(k.name, "t");
        let Node::Table(t) = t.get_ref() else {
            panic!("t is not a table")
        };
        let Node::Table(u) = t[0].1.get_ref() else {
            panic!("u is not a table")
        };
        assert_eq!(line_of(text, u[0].1.span().start), 3);
    }

    #[test]
    fn syntax_error_has_span() {
        let (msg, span) = parse("a = 1\nb = \n").unwrap_err();
        assert!(!msg.is_empty());
        assert_eq!(line_of("a = 1\nb = \n", span.unwrap().start), 2);
    }
}
