//! A YAML tree that keeps the position of every node, and a serde deserializer over it.
//!
//! Why not a YAML crate's own `from_str`: a check entry in `config.yaml` mixes keys the
//! engine owns (`name`, `interval`, ...) with keys its plugin owns (`url`, `port`, ...).
//! serde's `flatten` would lose `deny_unknown_fields` and positions; here the engine
//! splits the mapping node in two and each side deserializes its own part, with errors
//! that still say `config.yaml:12:5: checks[2].url: ...`.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

pub use crate::error::Pos;
use crate::error::{ConfigError, ConfigErrors};

/// A YAML value; scalars are resolved with the YAML 1.2 core schema.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A value and where it starts in the source.
#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    pub fn new(value: Value, pos: Pos) -> Node {
        Node { value, pos }
    }

    /// An empty mapping at `pos`, for sections that are absent from the file.
    pub fn empty_map(pos: Pos) -> Node {
        Node::new(Value::Map(Vec::new()), pos)
    }

    /// Parses one YAML document. An empty document is `Null`. A duplicate key is an
    /// error here; see [`Node::parse_lenient`] to go on past it.
    pub fn parse(text: &str) -> Result<Node, ConfigError> {
        let (node, mut problems) = Node::parse_lenient(text)?;
        match problems.0.is_empty() {
            true => Ok(node),
            false => Err(problems.0.swap_remove(0)),
        }
    }

    /// Parses one YAML document, going on past the problems that leave a usable tree
    /// (a duplicate key keeps its first value), so that they are reported together with
    /// every other problem of the file. `Err` when the text is not YAML at all.
    pub fn parse_lenient(text: &str) -> Result<(Node, ConfigErrors), ConfigError> {
        Builder::default().build(text)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The key node itself (for positions of keys).
    pub fn get_key(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, _)| k)
    }

    /// Splits a mapping in two: the entries whose key is in `keys`, and the rest.
    /// A node that is not a mapping is returned whole on the first side.
    pub fn split_keys(&self, keys: &[&str]) -> (Node, Node) {
        match &self.value {
            Value::Map(entries) => {
                let (mine, rest): (Vec<_>, Vec<_>) = entries
                    .iter()
                    .cloned()
                    .partition(|(k, _)| k.as_str().is_some_and(|k| keys.contains(&k)));
                (
                    Node::new(Value::Map(mine), self.pos),
                    Node::new(Value::Map(rest), self.pos),
                )
            }
            _ => (self.clone(), Node::empty_map(self.pos)),
        }
    }

    /// The position of the node at a dotted path such as `checks[2].port`, relative to
    /// this node; the closest existing ancestor's position if the path goes further.
    pub fn pos_of(&self, path: &str) -> Pos {
        let mut node = self;
        for seg in path_segments(path) {
            let next = match seg {
                Seg::Key(k) => node.get(k),
                Seg::Index(i) => node.as_seq().and_then(|s| s.get(i)),
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.pos
    }

    /// Structural equality that ignores positions: an edit that only moves a check
    /// within the file does not count as a change.
    pub fn same_content(&self, other: &Node) -> bool {
        match (&self.value, &other.value) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Seq(a), Value::Seq(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_content(y))
            }
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka.same_content(kb) && va.same_content(vb))
            }
            _ => false,
        }
    }

    /// A hash of the content, ignoring positions: what a reload compares to tell whether
    /// a check entry changed (FNV-1a; stable across runs).
    pub fn fingerprint(&self) -> u64 {
        fn feed(h: &mut crate::hash::Fnv1a, bytes: &[u8]) {
            h.feed(bytes);
        }
        fn walk(n: &Node, h: &mut crate::hash::Fnv1a) {
            match &n.value {
                Value::Null => feed(h, b"n"),
                Value::Bool(b) => feed(h, if *b { b"t" } else { b"f" }),
                Value::Int(i) => {
                    feed(h, b"i");
                    feed(h, &i.to_le_bytes());
                }
                Value::Float(f) => {
                    feed(h, b"d");
                    feed(h, &f.to_bits().to_le_bytes());
                }
                Value::Str(s) => {
                    feed(h, b"s");
                    feed(h, &(s.len() as u64).to_le_bytes());
                    feed(h, s.as_bytes());
                }
                Value::Seq(items) => {
                    feed(h, b"[");
                    items.iter().for_each(|i| walk(i, h));
                    feed(h, b"]");
                }
                Value::Map(entries) => {
                    feed(h, b"{");
                    for (k, v) in entries {
                        walk(k, h);
                        walk(v, h);
                    }
                    feed(h, b"}");
                }
            }
        }
        let mut h = crate::hash::Fnv1a::default();
        walk(self, &mut h);
        h.finish()
    }

    /// The content as one line of YAML (flow style, JSON-like), which `Node::parse` reads
    /// back to the same content (positions aside).
    pub fn to_flow(&self) -> String {
        fn emit(n: &Node, out: &mut String) {
            match &n.value {
                Value::Null => out.push_str("null"),
                Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Value::Int(i) => out.push_str(&i.to_string()),
                Value::Float(f) if f.is_nan() => out.push_str(".nan"),
                Value::Float(f) if f.is_infinite() => {
                    out.push_str(if *f > 0.0 { ".inf" } else { "-.inf" })
                }
                Value::Float(f) => out.push_str(&format!("{f:?}")),
                Value::Str(s) => quote(s, out),
                Value::Seq(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        emit(item, out);
                    }
                    out.push(']');
                }
                Value::Map(entries) => {
                    out.push('{');
                    for (i, (k, v)) in entries.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        emit(k, out);
                        out.push_str(": ");
                        emit(v, out);
                    }
                    out.push('}');
                }
            }
        }
        /// A YAML double-quoted scalar (its escapes are a superset of JSON's).
        fn quote(s: &str, out: &mut String) {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 || c == '\u{7f}' => {
                        out.push_str(&format!("\\u{:04x}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        let mut out = String::new();
        emit(self, &mut out);
        out
    }

    /// What kind of value this is, in words, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Deserializes this node into `T`, with errors that carry position and path.
    /// `path` is the path of this node in the file (`checks[2]`), used as the prefix of
    /// every error's path.
    pub fn deserialize<'de, T: serde::Deserialize<'de>>(
        &'de self,
        path: &str,
    ) -> Result<T, ConfigErrors> {
        T::deserialize(self).map_err(|e| e.into_config_errors(self.pos, path))
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_segments(path: &str) -> impl Iterator<Item = Seg<'_>> {
    path.split('.').filter(|s| !s.is_empty()).flat_map(|part| {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let key = (!key.is_empty()).then_some(Seg::Key(key));
        let idx = rest
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok().map(Seg::Index));
        key.into_iter().chain(idx)
    })
}

/// Joins a parent path and a child segment the way the error messages show them.
pub fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

// ---------------------------------------------------------------------------------------
// Building the tree from parser events.

/// How many nodes aliases may copy into one document in all. A config that reuses a
/// block of defaults a thousand times stays far below it; a "billion laughs" file of a
/// few hundred bytes that would expand to millions of nodes is refused at the alias that
/// crosses it, before it takes the memory.
pub const MAX_ALIAS_NODES: usize = 100_000;

#[derive(Default)]
struct Builder {
    /// Each anchored node, and how many nodes it holds.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes copied by aliases so far.
    copied: usize,
    problems: ConfigErrors,
}

fn count_nodes(n: &Node) -> usize {
    1 + match &n.value {
        Value::Seq(items) => items.iter().map(count_nodes).sum(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| count_nodes(k) + count_nodes(v))
            .sum(),
        _ => 0,
    }
}

enum Frame {
    Seq(usize, Pos, Vec<Node>),
    Map(usize, Pos, Vec<(Node, Node)>, Pending),
}

/// What a mapping waits for next.
enum Pending {
    Key,
    Value(Node),
    /// The value of a duplicate key: parsed, reported, dropped.
    Skip,
}

fn to_pos(m: saphyr_parser::Marker) -> Pos {
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

impl Builder {
    fn build(mut self, text: &str) -> Result<(Node, ConfigErrors), ConfigError> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut root: Option<Node> = None;
        let mut docs = 0;
        for item in Parser::new_from_str(text) {
            let (event, span) = item.map_err(|e| {
                ConfigError::at(
                    to_pos(*e.marker()),
                    "",
                    format!("invalid YAML: {}", e.info()),
                )
            })?;
            let pos = to_pos(span.start);
            let finished: Option<(Node, usize)> = match event {
                Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => None,
                Event::DocumentStart(_) => {
                    docs += 1;
                    if docs > 1 {
                        return Err(ConfigError::at(
                            pos,
                            "",
                            "only one YAML document is expected here (remove the second `---`)",
                        ));
                    }
                    None
                }
                Event::Alias(id) => match self.anchors.get(&id) {
                    Some((n, size)) => {
                        self.copied = self.copied.saturating_add(*size);
                        if self.copied > MAX_ALIAS_NODES {
                            return Err(ConfigError::at(
                                pos,
                                "",
                                format!(
                                    "aliases here would copy more than {MAX_ALIAS_NODES} values \
                                     into the document (nested anchors that multiply); \
                                     write the repeated parts out or reuse them less"
                                ),
                            ));
                        }
                        Some((Node::new(n.value.clone(), pos), 0))
                    }
                    None => {
                        return Err(ConfigError::at(pos, "", "alias to an unknown anchor"));
                    }
                },
                Event::Scalar(text, style, anchor, tag) => {
                    let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                    let value = if style == ScalarStyle::Plain && !forced_str {
                        resolve_plain(&text)
                    } else {
                        Value::Str(text.into_owned())
                    };
                    Some((Node::new(value, pos), anchor))
                }
                Event::SequenceStart(anchor, _) => {
                    check_depth(stack.len(), pos)?;
                    stack.push(Frame::Seq(anchor, pos, Vec::new()));
                    None
                }
                Event::MappingStart(anchor, _) => {
                    check_depth(stack.len(), pos)?;
                    stack.push(Frame::Map(anchor, pos, Vec::new(), Pending::Key));
                    None
                }
                Event::SequenceEnd => match stack.pop() {
                    Some(Frame::Seq(anchor, p, mut items)) => {
                        // A config's tree is held whole while it is checked: no slack.
                        items.shrink_to_fit();
                        Some((Node::new(Value::Seq(items), p), anchor))
                    }
                    _ => return Err(ConfigError::at(pos, "", "invalid YAML: unbalanced list")),
                },
                Event::MappingEnd => match stack.pop() {
                    Some(Frame::Map(anchor, p, mut entries, _)) => {
                        entries.shrink_to_fit();
                        Some((Node::new(Value::Map(entries), p), anchor))
                    }
                    _ => return Err(ConfigError::at(pos, "", "invalid YAML: unbalanced mapping")),
                },
            };
            let Some((node, anchor)) = finished else {
                continue;
            };
            if anchor != 0 {
                let size = count_nodes(&node);
                self.anchors.insert(anchor, (node.clone(), size));
            }
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq(_, _, items)) => items.push(node),
                Some(Frame::Map(_, _, entries, pending)) => {
                    match std::mem::replace(pending, Pending::Key) {
                        Pending::Skip => {}
                        Pending::Key => {
                            if !matches!(
                                node.value,
                                Value::Str(_) | Value::Int(_) | Value::Bool(_) | Value::Float(_)
                            ) {
                                return Err(ConfigError::at(
                                    node.pos,
                                    "",
                                    format!(
                                        "a mapping key must be a plain word, not {}",
                                        node.kind()
                                    ),
                                ));
                            }
                            let key = key_text(&node);
                            if let Some((first, _)) =
                                entries.iter().find(|(k, _)| key_text(k) == key)
                            {
                                self.problems.push(ConfigError::at(
                                    node.pos,
                                    "",
                                    format!(
                                        "duplicate key `{key}` (first given at line {})",
                                        first.pos.line
                                    ),
                                ));
                                *pending = Pending::Skip;
                                continue;
                            }
                            let key_node = Node::new(Value::Str(key), node.pos);
                            *pending = Pending::Value(key_node);
                        }
                        Pending::Value(key) => entries.push((key, node)),
                    }
                }
            }
        }
        let root = root.unwrap_or(Node::new(Value::Null, Pos { line: 1, col: 1 }));
        Ok((root, self.problems))
    }
}

/// Deeper nesting than any config needs; the limit keeps the recursive walks over the
/// tree (deserializing, fingerprinting) far from the stack's end.
const MAX_DEPTH: usize = 100;

fn check_depth(depth: usize, pos: Pos) -> Result<(), ConfigError> {
    if depth >= MAX_DEPTH {
        return Err(ConfigError::at(
            pos,
            "",
            format!("nesting deeper than {MAX_DEPTH} levels is not accepted"),
        ));
    }
    Ok(())
}

fn key_text(n: &Node) -> String {
    match &n.value {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Float(f) => f.to_string(),
        _ => String::new(),
    }
}

fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    let looks_numeric = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && s.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Int(i);
        }
        if let Ok(f) = s.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(s.to_string())
}

// ---------------------------------------------------------------------------------------
// The deserializer.

/// A deserialization error: the message, where it happened, and the path below the node
/// that was being deserialized.
#[derive(Debug)]
pub struct DeError {
    msg: String,
    pos: Option<Pos>,
    /// Innermost segment last.
    path: Vec<String>,
    /// An unknown key: its mapping then looks for the others, so that all are reported.
    unknown_key: bool,
    /// Further problems found beside this one (the other unknown keys of a mapping).
    also: Vec<DeError>,
}

impl DeError {
    fn with_pos(mut self, pos: Pos) -> Self {
        self.pos.get_or_insert(pos);
        self
    }

    fn under(mut self, seg: String) -> Self {
        self.path.insert(0, seg.clone());
        for e in &mut self.also {
            e.path.insert(0, seg.clone());
        }
        self
    }

    /// Turns this into reportable errors; `base` is the path of the deserialized node.
    pub fn into_config_errors(mut self, fallback: Pos, base: &str) -> ConfigErrors {
        let mut out = ConfigErrors::default();
        let also = std::mem::take(&mut self.also);
        let mut path = base.to_string();
        for seg in &self.path {
            path = join_path(&path, seg);
        }
        let mut msg = self.msg;
        if path.rsplit('.').next() == Some("port") {
            // Plugins read ports wide so that they can say what a port is; say it here too.
            msg = msg.replace(
                "a whole number from 0 to 4294967295",
                "a port number (1-65535)",
            );
        }
        out.push(ConfigError::at(self.pos.unwrap_or(fallback), &path, msg));
        for e in also {
            out.extend(e.into_config_errors(fallback, base));
        }
        out
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            msg: msg.to_string(),
            pos: None,
            path: Vec::new(),
            unknown_key: false,
            also: Vec::new(),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let mut e = DeError::custom(unknown_with_hint("key", field, expected));
        e.unknown_key = true;
        e
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        let want = expected_in_words(&exp.to_string());
        let msg = match unexp {
            de::Unexpected::Str(s)
                if want.contains("number") && s.trim().parse::<f64>().is_ok() =>
            {
                format!("\"{s}\" is quoted text; {want} is expected here (write it without quotes)")
            }
            _ => format!(
                "{} is not accepted here; {want} is expected",
                unexpected_in_words(&unexp)
            ),
        };
        DeError::custom(msg)
    }

    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        let want = expected_in_words(&exp.to_string());
        DeError::custom(format!(
            "{} is out of range; {want} is expected",
            unexpected_in_words(&unexp)
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::custom(unknown_with_hint("value", variant, expected))
    }
}

/// serde's names of the primitive types, as an operator reads them.
fn expected_in_words(exp: &str) -> String {
    let range = |lo: i128, hi: i128| format!("a whole number from {lo} to {hi}");
    match exp {
        "u8" => range(0, u8::MAX.into()),
        "u16" => range(0, u16::MAX.into()),
        "u32" => range(0, u32::MAX.into()),
        "u64" | "usize" => range(0, u64::MAX.into()),
        "i8" => range(i8::MIN.into(), i8::MAX.into()),
        "i16" => range(i16::MIN.into(), i16::MAX.into()),
        "i32" => range(i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => range(i64::MIN.into(), i64::MAX.into()),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a string" => "text".to_string(),
        "a sequence" => "a list".to_string(),
        other => other.to_string(),
    }
}

fn unexpected_in_words(u: &de::Unexpected) -> String {
    match u {
        de::Unexpected::Unsigned(n) => n.to_string(),
        de::Unexpected::Signed(n) => n.to_string(),
        de::Unexpected::Float(f) => f.to_string(),
        de::Unexpected::Bool(b) => b.to_string(),
        de::Unexpected::Str(s) => format!("\"{}\"", s.escape_debug()),
        de::Unexpected::Unit => "an empty value".to_string(),
        de::Unexpected::Seq => "a list".to_string(),
        de::Unexpected::Map => "a mapping".to_string(),
        other => other.to_string(),
    }
}

/// "unknown key `intervl` (did you mean `interval`?)", or the list of accepted names.
pub fn unknown_with_hint(what: &str, got: &str, expected: &[&str]) -> String {
    match did_you_mean(got, expected.iter().copied()) {
        Some(best) => format!("unknown {what} `{got}` (did you mean `{best}`?)"),
        None if expected.is_empty() => format!("unknown {what} `{got}`: none are accepted here"),
        None => format!(
            "unknown {what} `{got}`; expected one of: {}",
            expected.join(", ")
        ),
    }
}

/// The closest name, if one is close enough to be a likely typo: within a few edits
/// (a swapped pair of letters counts as one), or very similar by Jaro-Winkler.
pub fn did_you_mean<'a>(got: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let max_edits = (got.chars().count() / 3).max(1);
    candidates
        .map(|c| {
            let edits = strsim::damerau_levenshtein(got, c);
            let similarity = strsim::jaro_winkler(got, c);
            (edits, similarity, c)
        })
        .filter(|(edits, similarity, _)| *edits <= max_edits || *similarity > 0.85)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

type DeResult<T> = Result<T, DeError>;

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> DeResult<V::Value> {
        let r = match &self.value {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) => v.visit_i64(*i),
            Value::Float(f) => v.visit_f64(*f),
            Value::Str(s) => v.visit_borrowed_str(s),
            Value::Seq(items) => v.visit_seq(SeqAccess { items, i: 0 }),
            Value::Map(entries) => v.visit_map(MapAccess { entries, i: 0 }),
        };
        r.map_err(|e| e.with_pos(self.pos))
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> DeResult<V::Value> {
        match self.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
        .map_err(|e| e.with_pos(self.pos))
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> DeResult<V::Value> {
        // A plain `port: 8080` or `expect: 200` is a fine string where a string is wanted.
        let r: DeResult<V::Value> = match &self.value {
            Value::Int(i) => v.visit_string(i.to_string()),
            Value::Float(f) => v.visit_string(f.to_string()),
            Value::Bool(b) => v.visit_string(b.to_string()),
            _ => return self.deserialize_any(v),
        };
        r.map_err(|e| e.with_pos(self.pos))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> DeResult<V::Value> {
        self.deserialize_str(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> DeResult<V::Value> {
        v.visit_newtype_struct(self)
            .map_err(|e| e.with_pos(self.pos))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> DeResult<V::Value> {
        let r: DeResult<V::Value> = match &self.value {
            Value::Str(s) => v.visit_enum(s.as_str().into_deserializer()),
            Value::Map(entries) if entries.len() == 1 => v.visit_enum(EnumAccess {
                key: &entries[0].0,
                value: &entries[0].1,
            }),
            _ => Err(de::Error::custom(format!(
                "expected a name or a one-key mapping, found {}",
                self.kind()
            ))),
        };
        r.map_err(|e| e.with_pos(self.pos))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> DeResult<V::Value> {
        self.deserialize_any(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> DeResult<V::Value> {
        self.deserialize_any(v).map_err(|mut e| {
            // serde stops at the first problem of a struct; the operator wants every
            // unknown key of the mapping in the same run. (Every struct read from the
            // config denies unknown keys, so a key that is not a field is a mistake.)
            let Value::Map(entries) = &self.value else {
                return e;
            };
            let reported = (e.unknown_key && e.path.len() == 1).then(|| e.path[0].clone());
            for (k, _) in entries {
                let key = k.as_str().unwrap_or_default();
                if fields.contains(&key) || reported.as_deref() == Some(key) {
                    continue;
                }
                let mut other = <DeError as de::Error>::unknown_field(key, fields);
                other.pos = Some(k.pos);
                other.path.push(key.to_string());
                other.unknown_key = false;
                e.also.push(other);
            }
            e.unknown_key = false;
            e
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        bytes byte_buf unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct SeqAccess<'de> {
    items: &'de [Node],
    i: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> DeResult<Option<T::Value>> {
        let Some(node) = self.items.get(self.i) else {
            return Ok(None);
        };
        let i = self.i;
        self.i += 1;
        seed.deserialize(node)
            .map(Some)
            .map_err(|e| e.with_pos(node.pos).under(format!("[{i}]")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.i)
    }
}

struct MapAccess<'de> {
    entries: &'de [(Node, Node)],
    i: usize,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> DeResult<Option<K::Value>> {
        let Some((key, _)) = self.entries.get(self.i) else {
            return Ok(None);
        };
        seed.deserialize(key).map(Some).map_err(|e| {
            let seg = key.as_str().unwrap_or_default().to_string();
            e.with_pos(key.pos).under(seg)
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> DeResult<V::Value> {
        let (key, value) = &self.entries[self.i];
        self.i += 1;
        seed.deserialize(value).map_err(|e| {
            let seg = key.as_str().unwrap_or_default().to_string();
            e.with_pos(value.pos).under(seg)
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.i)
    }
}

struct EnumAccess<'de> {
    key: &'de Node,
    value: &'de Node,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = DeError;
    type Variant = VariantAccess<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> DeResult<(V::Value, Self::Variant)> {
        let v = seed
            .deserialize(self.key)
            .map_err(|e| e.with_pos(self.key.pos))?;
        Ok((v, VariantAccess { value: self.value }))
    }
}

struct VariantAccess<'de> {
    value: &'de Node,
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = DeError;

    fn unit_variant(self) -> DeResult<()> {
        de::Deserialize::deserialize(self.value)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> DeResult<T::Value> {
        seed.deserialize(self.value)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> DeResult<V::Value> {
        de::Deserializer::deserialize_seq(self.value, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> DeResult<V::Value> {
        de::Deserializer::deserialize_map(self.value, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        items: Vec<Inner>,
    }

    fn err_of<T: for<'de> Deserialize<'de> + std::fmt::Debug>(text: &str) -> String {
        let node = Node::parse(text).unwrap();
        node.deserialize::<T>("").unwrap_err().to_string()
    }

    #[test]
    fn scalars_resolve_with_the_core_schema() {
        let n = Node::parse("a: 10\nb: 1.5\nc: true\nd: ~\ne: '10'\nf: 10s\ng: 0x1f").unwrap();
        assert!(matches!(n.get("a").unwrap().value, Value::Int(10)));
        assert!(matches!(n.get("b").unwrap().value, Value::Float(f) if f == 1.5));
        assert!(matches!(n.get("c").unwrap().value, Value::Bool(true)));
        assert!(matches!(n.get("d").unwrap().value, Value::Null));
        assert_eq!(n.get("e").unwrap().as_str(), Some("10"));
        assert_eq!(n.get("f").unwrap().as_str(), Some("10s"));
        assert!(matches!(n.get("g").unwrap().value, Value::Int(31)));
    }

    #[test]
    fn positions_are_one_based_line_and_column() {
        let n = Node::parse("name: x\nitems:\n  - port: 80\n").unwrap();
        assert_eq!(n.pos_of("items[0].port"), Pos { line: 3, col: 11 });
        assert_eq!(n.pos_of("items[0]"), Pos { line: 3, col: 5 });
        assert_eq!(n.get_key("items").unwrap().pos, Pos { line: 2, col: 1 });
    }

    #[test]
    fn type_error_names_position_and_path() {
        let msg = err_of::<Outer>("name: x\nitems:\n  - port: 80\n  - port: eighty\n");
        assert_eq!(
            msg,
            "4:11: items[1].port: \"eighty\" is not accepted here; a whole number from 0 to 65535 is expected"
        );
        let msg = err_of::<Outer>("name: x\nitems:\n  - port: '80'\n");
        assert_eq!(
            msg,
            "3:11: items[0].port: \"80\" is quoted text; a whole number from 0 to 65535 is expected here (write it without quotes)"
        );
        let msg = err_of::<Outer>("name: x\nitems:\n  - port: 1099511627776\n");
        assert_eq!(
            msg,
            "3:11: items[0].port: 1099511627776 is out of range; a whole number from 0 to 65535 is expected"
        );
    }

    #[test]
    fn unknown_key_suggests_the_closest() {
        let msg = err_of::<Outer>("name: x\nitems:\n  - prot: 80\n");
        assert_eq!(
            msg,
            "3:5: items[0].prot: unknown key `prot` (did you mean `port`?)"
        );
    }

    #[test]
    fn unknown_key_far_from_everything_lists_the_choices() {
        let msg = err_of::<Outer>("name: x\nitems: []\nzzz: 1\n");
        assert_eq!(
            msg,
            "3:1: zzz: unknown key `zzz`; expected one of: name, items"
        );
    }

    #[test]
    fn missing_field_points_at_the_mapping() {
        let msg = err_of::<Outer>("name: x\nitems:\n  - tags: [a]\n");
        assert_eq!(msg, "3:5: items[0]: missing field `port`");
    }

    #[test]
    fn did_you_mean_catches_common_typos() {
        let keys = [
            "web",
            "interval",
            "threshold",
            "timeout",
            "max_concurrent_checks",
        ];
        for (typo, want) in [
            ("wbe", Some("web")),
            ("intervl", Some("interval")),
            ("treshold", Some("threshold")),
            ("timout", Some("timeout")),
            ("max_concurent_checks", Some("max_concurrent_checks")),
            ("colour", None),
        ] {
            assert_eq!(did_you_mean(typo, keys.iter().copied()), want, "{typo}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = Node::parse("a: 1\nb: 2\na: 3\n").unwrap_err().to_string();
        assert_eq!(e, "3:1: duplicate key `a` (first given at line 1)");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = Node::parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.is_some(), "{e}");
        assert!(e.to_string().contains("invalid YAML"), "{e}");
    }

    #[test]
    fn absurd_nesting_is_an_error_not_a_stack_overflow() {
        let text = format!("a: {}1{}", "[".repeat(150), "]".repeat(150));
        let e = Node::parse(&text).unwrap_err().to_string();
        // The root mapping is level 1, so the 100th bracket (column 103) is refused.
        assert_eq!(e, "1:103: nesting deeper than 100 levels is not accepted");
        // Far deeper: the scanner's own limit answers first, also as an error.
        let text = format!("a: {}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = Node::parse(&text).unwrap_err().to_string();
        assert!(e.contains("invalid YAML: recursion limit exceeded"), "{e}");
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit() {
        // Nine copies a level, seven levels: 4.8 million values from a few hundred bytes.
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g"]
            .windows(2)
            .map(|w| (w[0], w[1]))
        {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            text.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let e = Node::parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("aliases here would copy more than 100000 values"),
            "{e}"
        );
        assert!(
            e.starts_with("6:"),
            "the line of the alias that crosses it: {e}"
        );
        // A block of defaults reused a thousand times is fine.
        let mut text = String::from("d: &d {interval: 10s, timeout: 2s, threshold: 3}\nl:\n");
        for _ in 0..1000 {
            text.push_str("  - *d\n");
        }
        assert!(Node::parse(&text).is_ok());
    }

    #[test]
    fn a_duplicate_key_does_not_hide_the_rest_of_the_file() {
        let (n, problems) = Node::parse_lenient("a: 1\nb: {c: 2}\na: {x: 3}\nd: 4\n").unwrap();
        assert_eq!(
            problems.to_string(),
            "3:1: duplicate key `a` (first given at line 1)"
        );
        // The first value is kept and the document goes on after the duplicate.
        assert_eq!(n.get("a").unwrap().to_flow(), "1");
        assert_eq!(n.get("d").unwrap().to_flow(), "4");
    }

    #[test]
    fn every_unknown_key_of_a_mapping_is_reported() {
        let n = Node::parse("name: x\nitems:\n  - port: 1\n    prot: 2\n    tgas: 3\n").unwrap();
        let e = n.deserialize::<Outer>("").unwrap_err().to_string();
        assert_eq!(
            e,
            "4:5: items[0].prot: unknown key `prot` (did you mean `port`?)\n\
             5:5: items[0].tgas: unknown key `tgas` (did you mean `tags`?)"
        );
    }

    #[test]
    fn anchors_and_aliases_copy_the_value() {
        let n = Node::parse("base: &b {port: 1}\nother: *b\n").unwrap();
        assert!(n.get("other").unwrap().same_content(n.get("base").unwrap()));
    }

    #[test]
    fn flow_text_reads_back_to_the_same_content() {
        let text = "a: 1\nb: -2.5\nc: [x, 'y z', \"q\\\"uote\\\\n\\t\\u0001\"]\nd: {e: ~, f: true}\ng: .inf\nh: '10'\ni: ''\n";
        let n = Node::parse(text).unwrap();
        let back = Node::parse(&n.to_flow()).unwrap();
        assert!(n.same_content(&back), "{}", n.to_flow());
        assert_eq!(n.fingerprint(), back.fingerprint());
    }

    #[test]
    fn split_keys_partitions_a_mapping() {
        let n = Node::parse("name: a\nurl: b\nport: 1\n").unwrap();
        let (mine, rest) = n.split_keys(&["name"]);
        assert_eq!(mine.as_map().unwrap().len(), 1);
        assert_eq!(rest.as_map().unwrap().len(), 2);
    }

    #[test]
    fn same_content_ignores_positions() {
        let a = Node::parse("x: 1\ny: [a, b]\n").unwrap();
        let b = Node::parse("\n\nx:   1\ny:\n  - a\n  - b\n").unwrap();
        let c = Node::parse("x: 1\ny: [a, c]\n").unwrap();
        assert!(a.same_content(&b));
        assert!(!a.same_content(&c));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
