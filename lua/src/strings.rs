//! The string library's functions that Lua's C code runs without a hook, replaced by
//! ones that a run's budget can stop: `find`, `match`, `gmatch` and `gsub` (with the
//! matcher of `pattern.rs`), and `rep` (which looped for ever on an empty string).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value, Variadic};

use crate::budget::{Budget, Runaway};
use crate::pattern::{find_plain, no_specials, Capture, Matcher, Stop};

/// How long one call may match without a break, whatever the run's budget: a pattern is
/// a single C-like call, during which no other check on the thread runs.
pub const MATCH_SLICE: Duration = Duration::from_millis(200);

/// Wraps the Rust functions, which answer `true, ...` or `false, error`, so that their
/// errors are raised as Lua's own are: a plain message without a position, or the very
/// value a `gsub` function raised.
const WRAP: &str = r#"
local string, error, tonumber, tointeger, rfind, rmatch, rgmatch, rgsub, rcost, limit = ...
local cfind, cmatch, cgmatch, cgsub = string.find, string.match, string.gmatch, string.gsub
local type = type
-- `false, error, level`: level 2 puts the script's line in front of a message, as Lua's
-- own string functions do (this function is tail-called in place of the wrapper).
local function pass(ok, ...)
  if ok then return ... end
  local e, level = ...
  error(e, level)
end
-- Lua's own C matcher where its worst case is small: (#s + 1) ^ (quantifiers + 1)
-- * (#p + 1) steps at most. Every other call goes to the step-counted matcher.
local costs, ncosts = {}, 0
local function small(s, p, plain)
  if type(s) ~= "string" or type(p) ~= "string" then return false end
  local q
  if plain then
    q = 0
  else
    q = costs[p]
    if q == nil then
      q = rcost(p)
      if ncosts >= 1024 then costs, ncosts = {}, 0 end
      costs[p], ncosts = q, ncosts + 1
    end
  end
  return q >= 0 and (#s + 1) ^ (q + 1) * (#p + 1) <= limit
end
local pcall = pcall
-- Lua's own gsub, called through pcall from here, raises its errors without a position:
-- put the script's line in front, as a direct call would. An error that only passes
-- through (raised by a gsub function, so with its own position, or not a string) goes
-- on untouched.
local function cpass(ok, ...)
  if ok then return ... end
  local e = ...
  if type(e) == "string" and not cfind(e, "^[^\n]-:%d+: ") then error(e, 2) end
  error(e, 0)
end
-- Patterns that are not well formed never reach Lua's functions (rcost says so), so
-- their errors come from ours, with the script's line; what Lua's gsub can still raise
-- is about a replacement, hence its pcall.
string.find = function(s, p, init, plain)
  if small(s, p, plain) then return cfind(s, p, init, plain) end
  return pass(rfind(s, p, init, plain))
end
string.match = function(s, p, init)
  if small(s, p) then return cmatch(s, p, init) end
  return pass(rmatch(s, p, init))
end
string.gsub = function(s, p, repl, n)
  if small(s, p) then return cpass(pcall(cgsub, s, p, repl, n)) end
  return pass(rgsub(s, p, repl, n))
end
string.gmatch = function(s, p, init)
  if small(s, p) then return cgmatch(s, p, init) end
  local it = pass(rgmatch(s, p, init))
  return function() return pass(it()) end
end
local rep = string.rep
local function rep_result(ok, r)
  if ok then return true, r end
  if type(r) == "string" then return false, (cgsub(r, "^vigia:%d+: ", "")), 2 end
  return false, r, 0
end
-- Lua's own loop copies nothing n times for an empty string: for ever, for a huge n.
string.rep = function(s, n, sep)
  local count = tonumber(n)
  if s == "" and (sep == nil or sep == "") and count and tointeger(count) then return "" end
  return pass(rep_result(pcall(rep, s, n, sep)))
end
"#;

/// The largest worst case left to Lua's own matcher, in steps (tens of ms at most,
/// under the 200 ms a script may go without a break).
pub const C_MATCHER_LIMIT: f64 = 1e7;

/// A failure of one of these functions: an error for Lua to raise, or one of the
/// engine's own (a runaway) to pass on as it is.
enum Fail {
    /// A message of ours, as Lua's string library would raise it.
    Raise(Value),
    /// What a script's own function raised, passed on untouched.
    Rethrow(Value),
    Engine(mlua::Error),
}

impl From<mlua::Error> for Fail {
    fn from(e: mlua::Error) -> Self {
        Fail::Engine(e)
    }
}

type FR<T> = Result<T, Fail>;

fn raise(lua: &Lua, msg: String) -> Fail {
    match lua.create_string(msg) {
        Ok(s) => Fail::Raise(Value::String(s)),
        Err(e) => Fail::Engine(e),
    }
}

/// `true, values...`, `false, error`, or the engine's error.
fn answer(lua: &Lua, r: FR<Vec<Value>>) -> mlua::Result<MultiValue> {
    match r {
        Ok(mut v) => {
            v.insert(0, Value::Boolean(true));
            Ok(MultiValue::from_vec(v))
        }
        // A message of ours gets the script's position; a value a script raised (in
        // a `gsub` function) goes on as it was.
        Err(Fail::Raise(e)) => Ok(MultiValue::from_vec(vec![
            Value::Boolean(false),
            e,
            Value::Integer(2),
        ])),
        Err(Fail::Rethrow(e)) => Ok(MultiValue::from_vec(vec![
            Value::Boolean(false),
            e,
            Value::Integer(0),
        ])),
        Err(Fail::Engine(e)) => {
            let _ = lua;
            Err(e)
        }
    }
}

fn type_name(v: Option<&Value>) -> &'static str {
    match v {
        None => "no value",
        Some(v) => v.type_name(),
    }
}

fn arg_str(lua: &Lua, args: &[Value], i: usize, f: &str) -> FR<LuaString> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Integer(_) | Value::Number(_))) => match lua.coerce_string(v.clone())? {
            Some(s) => Ok(s),
            None => Err(raise(
                lua,
                format!(
                    "bad argument #{} to '{f}' (string expected, got {})",
                    i + 1,
                    v.type_name()
                ),
            )),
        },
        other => Err(raise(
            lua,
            format!(
                "bad argument #{} to '{f}' (string expected, got {})",
                i + 1,
                type_name(other)
            ),
        )),
    }
}

fn arg_int(lua: &Lua, args: &[Value], i: usize, f: &str) -> FR<Option<i64>> {
    let bad = |what: String| {
        Err(raise(
            lua,
            format!("bad argument #{} to '{f}' ({what})", i + 1),
        ))
    };
    let n = match args.get(i) {
        None | Some(Value::Nil) => return Ok(None),
        Some(Value::Integer(n)) => return Ok(Some(*n)),
        Some(Value::Number(n)) => *n,
        Some(Value::String(s)) => {
            let t = s.to_string_lossy();
            let t = t.trim();
            if let Ok(n) = t.parse::<i64>() {
                return Ok(Some(n));
            }
            match t.parse::<f64>() {
                Ok(n) => n,
                Err(_) => return bad("number expected, got string".into()),
            }
        }
        Some(v) => return bad(format!("number expected, got {}", v.type_name())),
    };
    if n.fract() == 0.0 && n >= -(2f64.powi(63)) && n < 2f64.powi(63) {
        Ok(Some(n as i64))
    } else {
        bad("number has no integer representation".into())
    }
}

fn truthy(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Nil) | Some(Value::Boolean(false)))
}

/// The Rust side of one of the functions: the subject and the pattern read as Lua reads
/// them, the other arguments to `f`; the answer in the form the wrapper expects.
fn entry(
    lua: &Lua,
    name: &'static str,
    f: impl Fn(&Lua, LuaString, LuaString, &[Value]) -> FR<Vec<Value>> + Send + 'static,
) -> mlua::Result<Function> {
    lua.create_function(move |lua, args: Variadic<Value>| {
        let r = arg_str(lua, &args, 0, name)
            .and_then(|s| Ok((s, arg_str(lua, &args, 1, name)?)))
            .and_then(|(s, p)| f(lua, s, p, &args));
        answer(lua, r)
    })
}

pub fn install(lua: &Lua, budget: Arc<Budget>) -> mlua::Result<()> {
    install_with(lua, budget, C_MATCHER_LIMIT)
}

/// As [`install`], with the largest worst case left to Lua's matcher (0: none, for the
/// tests that compare the two).
pub(crate) fn install_with(lua: &Lua, budget: Arc<Budget>, c_limit: f64) -> mlua::Result<()> {
    let string: Table = lua.globals().get("string")?;
    // The unwrapped pcall: a `gsub` function's error comes back as its own value.
    let pcall: Function = lua.globals().get("pcall")?;
    let b = budget.clone();
    let rfind = entry(lua, "find", move |lua, s, p, args| {
        let init = arg_int(lua, args, 2, "find")?;
        find(lua, &b, "find", &s, &p, init, truthy(args.get(3)), true)
    })?;
    let b = budget.clone();
    let rmatch = entry(lua, "match", move |lua, s, p, args| {
        let init = arg_int(lua, args, 2, "match")?;
        find(lua, &b, "match", &s, &p, init, false, false)
    })?;
    let b = budget.clone();
    let rgmatch = entry(lua, "gmatch", move |lua, s, p, args| {
        let init = arg_int(lua, args, 2, "gmatch")?;
        Ok(vec![Value::Function(gmatch(lua, b.clone(), s, p, init)?)])
    })?;
    let b = budget;
    let rgsub = entry(lua, "gsub", move |lua, s, p, args| {
        let repl = args.get(2).cloned().unwrap_or(Value::Nil);
        let n = arg_int(lua, args, 3, "gsub")?;
        gsub(lua, &b, &pcall, &s, &p, repl, n)
    })?;
    let rcost = lua.create_function(|_, p: LuaString| {
        let p = p.as_bytes();
        // Not well formed: never Lua's matcher, whose errors would not name the line.
        Ok(if well_formed(&p) {
            i64::from(quantifiers(&p))
        } else {
            -1
        })
    })?;
    lua.load(WRAP).set_name("=vigia").call::<()>((
        string,
        lua.globals().get::<Function>("error")?,
        lua.globals().get::<Function>("tonumber")?,
        lua.globals()
            .get::<Table>("math")?
            .get::<Function>("tointeger")?,
        rfind,
        rmatch,
        rgmatch,
        rgsub,
        rcost,
        c_limit,
    ))
}

/// Whether a pattern is well formed as a whole (every class closed, every capture
/// closed and referred to only once closed, `%b` and `%f` complete). Conservative: a
/// pattern it refuses goes to this module's matcher, which answers exactly as Lua would.
fn well_formed(p: &[u8]) -> bool {
    let mut open: Vec<usize> = Vec::new();
    let mut closed = [false; crate::pattern::MAX_CAPTURES];
    let mut level = 0;
    let mut i = usize::from(p.first() == Some(&b'^'));
    while i < p.len() {
        match p[i] {
            b'(' => {
                if level >= crate::pattern::MAX_CAPTURES {
                    return false;
                }
                open.push(level);
                level += 1;
                i += if p.get(i + 1) == Some(&b')') {
                    // A position capture is closed at once.
                    if let Some(l) = open.pop() {
                        closed[l] = true;
                    }
                    2
                } else {
                    1
                };
                continue;
            }
            b')' => {
                let Some(l) = open.pop() else { return false };
                closed[l] = true;
                i += 1;
                continue;
            }
            b'%' => match p.get(i + 1) {
                None => return false,
                Some(b'b') => {
                    if p.len() < i + 4 {
                        return false;
                    }
                    i += 4;
                    continue;
                }
                Some(b'f') => {
                    if p.get(i + 2) != Some(&b'[') {
                        return false;
                    }
                    match set_end(p, i + 2) {
                        Some(e) => i = e,
                        None => return false,
                    }
                    continue;
                }
                Some(d) if d.is_ascii_digit() => {
                    let l = (d - b'0') as usize;
                    if l == 0 || l > level || !closed[l - 1] {
                        return false;
                    }
                    i += 2;
                    continue;
                }
                Some(_) => i += 2,
            },
            b'[' => match set_end(p, i) {
                Some(e) => i = e,
                None => return false,
            },
            _ => i += 1,
        }
        // A quantifier after a single class.
        if matches!(p.get(i), Some(b'*' | b'+' | b'-' | b'?')) {
            i += 1;
        }
    }
    open.is_empty()
}

/// The end (one past `]`) of the set that starts at `p[at] == b'['`, as Lua reads it.
fn set_end(p: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    if p.get(i) == Some(&b'^') {
        i += 1;
    }
    loop {
        if i >= p.len() {
            return None;
        }
        let c = p[i];
        i += 1;
        if c == b'%' {
            if i >= p.len() {
                return None;
            }
            i += 1;
        }
        if p.get(i) == Some(&b']') {
            return Some(i + 1);
        }
    }
}

/// The pattern items that make Lua's matcher backtrack or scan (`*`, `+`, `-`, `?`,
/// `%b`), counted generously: each multiplies the worst case by the subject's length.
fn quantifiers(p: &[u8]) -> u32 {
    let mut n = 0;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'%' => {
                if p.get(i + 1) == Some(&b'b') {
                    n += 1;
                }
                i += 1;
            }
            b'*' | b'+' | b'-' | b'?' => n += 1,
            _ => {}
        }
        i += 1;
    }
    n
}

/// The tick of one call: stops it at the run's deadline, or after [`MATCH_SLICE`].
fn ticker<'a>(
    lua: &'a Lua,
    budget: &'a Budget,
    name: &'a str,
) -> impl FnMut() -> Result<(), mlua::Error> + 'a {
    let started = Instant::now();
    move || {
        if let Some(e) = crate::budget::past_deadline(lua, budget) {
            return Err(e);
        }
        if started.elapsed() >= MATCH_SLICE {
            return Err(mlua::Error::external(Runaway(format!(
                "{}: stopped: string.{name} matched for {} without a break (a pattern that \
                 backtracks, such as several `.-` or `.*`, on a long text?)",
                crate::budget::script_position(lua),
                vigia_api::Dur(MATCH_SLICE)
            ))));
        }
        Ok(())
    }
}

fn stop_to_fail(lua: &Lua, e: Stop<mlua::Error>) -> Fail {
    match e {
        Stop::Pattern(msg) => raise(lua, msg),
        Stop::Tick(e) => Fail::Engine(e),
    }
}

/// Lua 5.4's `posrelatI`: a 1-based start from a possibly negative one.
fn start_of(init: Option<i64>, len: usize) -> usize {
    match init.unwrap_or(1) {
        i if i > 0 => i as usize,
        0 => 1,
        i if i.unsigned_abs() as usize > len => 1,
        i => (len as i64 + i + 1) as usize,
    }
}

fn capture_value(lua: &Lua, c: Capture) -> FR<Value> {
    Ok(match c {
        Capture::Text(t) => Value::String(lua.create_string(t)?),
        Capture::Position(p) => Value::Integer(p as i64),
    })
}

fn capture<E, F: FnMut() -> Result<(), E>>(
    lua: &Lua,
    m: &Matcher<E, F>,
    i: usize,
    s: usize,
    e: usize,
) -> FR<Value> {
    match m.capture(i, s, e) {
        Ok(c) => capture_value(lua, c),
        Err(msg) => Err(raise(lua, msg)),
    }
}

fn captures<E, F: FnMut() -> Result<(), E>>(
    lua: &Lua,
    m: &Matcher<E, F>,
    s: usize,
    e: usize,
    whole: bool,
) -> FR<Vec<Value>> {
    (0..m.count(whole))
        .map(|i| capture(lua, m, i, s, e))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn find(
    lua: &Lua,
    budget: &Budget,
    name: &str,
    s: &LuaString,
    p: &LuaString,
    init: Option<i64>,
    plain: bool,
    is_find: bool,
) -> FR<Vec<Value>> {
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let (src, pat): (&[u8], &[u8]) = (&src, &pat);
    let init = start_of(init, src.len());
    if init > src.len() + 1 {
        return Ok(vec![Value::Nil]);
    }
    if is_find && (plain || no_specials(pat)) {
        return Ok(match find_plain(src, pat, init - 1) {
            Some(at) => vec![
                Value::Integer(at as i64 + 1),
                Value::Integer((at + pat.len()) as i64),
            ],
            None => vec![Value::Nil],
        });
    }
    let (anchor, p0) = match pat.first() {
        Some(b'^') => (true, 1),
        _ => (false, 0),
    };
    let mut m = Matcher::new(src, pat, ticker(lua, budget, name));
    let mut s1 = init - 1;
    loop {
        if let Some(e) = m.match_at(s1, p0).map_err(|e| stop_to_fail(lua, e))? {
            let mut out = Vec::new();
            if is_find {
                out.push(Value::Integer(s1 as i64 + 1));
                out.push(Value::Integer(e as i64));
                out.extend(captures(lua, &m, s1, e, false)?);
            } else {
                out = captures(lua, &m, s1, e, true)?;
            }
            return Ok(out);
        }
        if anchor || s1 >= src.len() {
            return Ok(vec![Value::Nil]);
        }
        s1 += 1;
    }
}

fn gmatch(
    lua: &Lua,
    budget: Arc<Budget>,
    s: LuaString,
    p: LuaString,
    init: Option<i64>,
) -> FR<Function> {
    let len = s.as_bytes().len();
    let start = start_of(init, len).min(len + 1) - 1;
    // The next position to try, and the end of the last match (an empty match there is
    // not taken again).
    let state = Mutex::new((start, None::<usize>));
    Ok(lua.create_function(move |lua, ()| {
        let r = (|| {
            let (src, pat) = (s.as_bytes(), p.as_bytes());
            let (src, pat): (&[u8], &[u8]) = (&src, &pat);
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            let mut m = Matcher::new(src, pat, ticker(lua, &budget, "gmatch"));
            let mut at = st.0;
            while at <= src.len() {
                if let Some(e) = m.match_at(at, 0).map_err(|e| stop_to_fail(lua, e))? {
                    if Some(e) != st.1 {
                        *st = (e, Some(e));
                        return captures(lua, &m, at, e, true);
                    }
                }
                at += 1;
            }
            st.0 = at;
            Ok(vec![Value::Nil])
        })();
        answer(lua, r)
    })?)
}

fn gsub(
    lua: &Lua,
    budget: &Budget,
    pcall: &Function,
    s: &LuaString,
    p: &LuaString,
    repl: Value,
    max: Option<i64>,
) -> FR<Vec<Value>> {
    match &repl {
        Value::String(_)
        | Value::Integer(_)
        | Value::Number(_)
        | Value::Table(_)
        | Value::Function(_) => {}
        other => {
            return Err(raise(
                lua,
                format!(
                    "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                    other.type_name()
                ),
            ))
        }
    }
    let repl_text = match &repl {
        Value::Integer(_) | Value::Number(_) | Value::String(_) => {
            lua.coerce_string(repl.clone())?
        }
        _ => None,
    };
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let (src, pat): (&[u8], &[u8]) = (&src, &pat);
    let (anchor, p0) = match pat.first() {
        Some(b'^') => (true, 1),
        _ => (false, 0),
    };
    let max = max.unwrap_or(src.len() as i64 + 1);
    let mut m = Matcher::new(src, pat, ticker(lua, budget, "gsub"));
    let mut out: Vec<u8> = Vec::with_capacity(src.len());
    let mut at = 0;
    let mut last: Option<usize> = None;
    let mut n = 0;
    while n < max {
        let found = m.match_at(at, p0).map_err(|e| stop_to_fail(lua, e))?;
        match found {
            Some(e) if Some(e) != last => {
                n += 1;
                add_value(lua, &m, pcall, &mut out, at, e, &repl, repl_text.as_ref())?;
                at = e;
                last = Some(e);
            }
            _ if at < src.len() => {
                out.push(src[at]);
                at += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    out.extend_from_slice(&src[at.min(src.len())..]);
    Ok(vec![
        Value::String(lua.create_string(&out)?),
        Value::Integer(n),
    ])
}

#[allow(clippy::too_many_arguments)]
fn add_value<E, F: FnMut() -> Result<(), E>>(
    lua: &Lua,
    m: &Matcher<E, F>,
    pcall: &Function,
    out: &mut Vec<u8>,
    s: usize,
    e: usize,
    repl: &Value,
    text: Option<&LuaString>,
) -> FR<()> {
    let whole = m.whole(s, e);
    if let Some(text) = text {
        let t = text.as_bytes();
        let mut i = 0;
        while i < t.len() {
            let c = t[i];
            i += 1;
            if c != b'%' {
                out.push(c);
                continue;
            }
            match t.get(i) {
                Some(b'%') => out.push(b'%'),
                Some(b'0') => out.extend_from_slice(whole),
                Some(d) if d.is_ascii_digit() => {
                    match capture(lua, m, (d - b'1') as usize, s, e)? {
                        Value::String(t) => out.extend_from_slice(&t.as_bytes()),
                        Value::Integer(p) => out.extend_from_slice(p.to_string().as_bytes()),
                        _ => {}
                    }
                }
                _ => {
                    return Err(raise(
                        lua,
                        "invalid use of '%' in replacement string".into(),
                    ))
                }
            }
            i += 1;
        }
        return Ok(());
    }
    let value: Value = match repl {
        Value::Table(t) => t.get(capture(lua, m, 0, s, e)?)?,
        Value::Function(f) => {
            let mut args = vec![Value::Function(f.clone())];
            args.extend(captures(lua, m, s, e, true)?);
            let r: MultiValue = pcall.call(MultiValue::from_vec(args))?;
            let mut r = r.into_iter();
            match r.next() {
                Some(Value::Boolean(true)) => r.next().unwrap_or(Value::Nil),
                _ => return Err(Fail::Rethrow(r.next().unwrap_or(Value::Nil))),
            }
        }
        _ => Value::Nil,
    };
    match value {
        Value::Nil | Value::Boolean(false) => out.extend_from_slice(whole),
        v @ (Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
            if let Some(s) = lua.coerce_string(v)? {
                out.extend_from_slice(&s.as_bytes());
            }
        }
        other => {
            return Err(raise(
                lua,
                format!("invalid replacement value (a {})", other.type_name()),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case is run by Lua's C library and by this module, and must give the same
    /// values, or the same error.
    const CASES: &str = r#"
local S = {
  "", "a", "hello world", "  key = value  ", "aaa", "abcabc", "x(y(z)w)v", "THE (quick) fox",
  "123 abc 456", "f(a,b) = [c]", "line1\nline2\n", "a.b.c", "%d", "\0a\0", "naïve café",
  "2026-12-01T13:19:04Z", "Uptime: 1234 s", "wsrep_local_state_comment\tSynced", "[x] [y]",
  "THE (quick) brown fox jumps", "a,b,,c", "^$", "--==--",
}
local P = {
  "", "a", "^a", "a$", "^$", ".", ".-", ".*", "a*", "a+", "a-", "a?", "a?b", "%a+", "%d+", "%s*",
  "%w+", "%p", "%S+", "%u", "%l+", "%x+", "%c", "%g+", "[%a_][%w_]*", "[^%s]+", "[a-c]+",
  "[]]", "[^]]", "[a-]", "[%]]", "(%w+)=(%w+)", "(%w+)%s*=%s*(%w+)", "()a()", "(a)(b)?",
  "%b()", "%b[]", "%f[%w]%w+", "%f[%W]", "(a*(.)%w(%s*))", "(h)(e)(l)(l)(o)", "(.)%1",
  "((a)%2)", "^(%d+)%-(%d+)%-(%d+)T", "(%d+) s$", "\t(%a+)$", "%.", "a.b", "[.]", "%z",
  "[%z]", "\0", "%%", "x*$", "^x*", "(", ")", "%", "[a", "%b", "%f", "%fx", "(()", "%1",
  "(%1)", "[^", "%b(", "(a)%2", "[%a-z]", "[a-%d]", "%-", "-", "[-]", "a-b", "x-y*",
}
local out = {}
local function pack(...) return { n = select('#', ...), ... } end
local function same(a, b)
  if a.n ~= b.n then return false end
  for i = 1, a.n do if a[i] ~= b[i] then return false end end
  return true
end
local function show(r)
  local t = {}
  for i = 1, r.n do t[#t + 1] = tostring(r[i]) end
  return table.concat(t, ", ")
end
local function via(f)
  -- Called from a Lua function, an error carries that function's line.
  return function(...) local r = pack(f(...)) return table.unpack(r, 1, r.n) end
end
local function cmp(name, c, mine, ...)
  local a, b = pack(pcall(via(c), ...)), pack(pcall(via(mine), ...))
  -- Lua names a function in its messages by the name it was called by.
  for _, r in ipairs({ a, b }) do
    if type(r[2]) == "string" then r[2] = cgsub(r[2], " to '[%w_]+' %(", " to 'F' (") end
  end
  if not same(a, b) then
    out[#out + 1] = name .. "(" .. show(pack(...)) .. "): C " .. show(a) .. " / ours " .. show(b)
  end
end
local function collect(f, ...)
  local ok, it = pcall(f, ...)
  if not ok then return "error: " .. it end
  local t = {}
  while true do
    local r = pack(pcall(it))
    if not r[1] then t[#t + 1] = "error: " .. tostring(r[2]) break end
    if r[2] == nil then break end
    t[#t + 1] = show(r)
    if #t > 200 then break end
  end
  return table.concat(t, " | ")
end
for _, s in ipairs(S) do
  for _, p in ipairs(P) do
    for _, init in ipairs({ nil, 1, 2, -1, -3, 0, 100 }) do
      cmp("find", cfind, string.find, s, p, init)
      cmp("match", cmatch, string.match, s, p, init)
      local a, b = collect(cgmatch, s, p, init), collect(string.gmatch, s, p, init)
      if a ~= b then out[#out + 1] = "gmatch(" .. s .. ", " .. p .. ", " .. tostring(init) .. "): C " .. a .. " / ours " .. b end
    end
    cmp("find plain", cfind, string.find, s, p, 1, true)
    for _, r in ipairs({ "<%0>", "%1-%2", "%%", "x", "%9", "%x", "" }) do
      cmp("gsub", cgsub, string.gsub, s, p, r)
      cmp("gsub n", cgsub, string.gsub, s, p, r, 2)
    end
    cmp("gsub table", cgsub, string.gsub, s, p, { a = "A", hello = 1, key = false })
    cmp("gsub function", cgsub, string.gsub, s, p, function(x, y) if x == "a" then return nil end return (y or x) .. "!" end)
    cmp("gsub bad function", cgsub, string.gsub, s, p, function() return {} end)
  end
end
-- Random patterns over the characters that matter, on a few subjects.
math.randomseed(42)
local alphabet = { "a", "b", ".", "%", "(", ")", "[", "]", "^", "$", "*", "+", "-", "?", "%a", "%d", "%b()", "%f[a]", "%1", "[^a]" }
for _ = 1, 3000 do
  local t = {}
  for _ = 1, math.random(1, 6) do t[#t + 1] = alphabet[math.random(#alphabet)] end
  local p = table.concat(t)
  for _, s in ipairs({ "aab(ba)b", "ab12ba", "", "b-a^$%" }) do
    cmp("find", cfind, string.find, s, p)
    cmp("gsub", cgsub, string.gsub, s, p, "<%0>")
  end
end
cmp("gsub bad repl", cgsub, string.gsub, "a", "a", true)
cmp("find number", cfind, string.find, 12345, 3)
cmp("rep", crep, string.rep, "ab", 3, ",")
cmp("rep 0", crep, string.rep, "ab", 0)
cmp("rep number", crep, string.rep, 7, 2)
return table.concat(out, "\n")
"#;

    #[test]
    fn patterns_answer_as_lua_does() {
        // Every call through this module's matcher; then as scripts get it, the small
        // cases left to Lua's own.
        for limit in [0.0, C_MATCHER_LIMIT] {
            compare(limit);
        }
    }

    fn compare(limit: f64) {
        let lua = Lua::new();
        let string: Table = lua.globals().get("string").unwrap();
        for f in ["find", "match", "gmatch", "gsub", "rep"] {
            let c: Function = string.get(f).unwrap();
            lua.globals().set(format!("c{f}"), c).unwrap();
        }
        let guard = lua.create_table().unwrap();
        let budget = Arc::new(Budget::new("t.lua", 16 << 20, guard));
        install_with(&lua, budget, limit).unwrap();
        let diffs: String = lua.load(CASES).eval().unwrap();
        let n = diffs.lines().count();
        assert!(
            diffs.is_empty(),
            "{n} differences:\n{}",
            diffs.lines().take(40).collect::<Vec<_>>().join("\n")
        );
    }
}
