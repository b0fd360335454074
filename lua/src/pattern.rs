//! Lua 5.4's patterns, matched here with a step count instead of by Lua's C string
//! library.
//!
//! Why: Lua's matcher backtracks, and runs inside one C call where no instruction hook
//! fires: `("a"):rep(5000):find(".-.-.-.-.-.-b")` held the engine's thread for hours and
//! nothing could stop it. This matcher has the same semantics (the cases are compared
//! with the C library's answers in `lua/tests/patterns.rs`) and calls `tick` every
//! [`TICK_EVERY`] steps, which stops it when the run's budget is spent.
//!
//! It works on bytes, with the C locale's classes (`%a` is ASCII letters), like Lua.

/// Captures a pattern may have, as in Lua.
pub const MAX_CAPTURES: usize = 32;
/// Nesting of the matcher's recursion, as Lua's `MAXCCALLS` for patterns.
const MAX_DEPTH: usize = 200;
/// Steps between two calls of the tick.
pub const TICK_EVERY: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Len {
    Unfinished,
    Position,
    Bytes(usize),
}

/// What a match gives back for one capture.
#[derive(Debug, PartialEq)]
pub enum Capture<'a> {
    Text(&'a [u8]),
    /// A position capture `()`: 1-based.
    Position(usize),
}

/// Why a match ended without an answer.
#[derive(Debug)]
pub enum Stop<E> {
    /// The pattern is malformed: Lua's own wording.
    Pattern(String),
    /// The tick said to stop.
    Tick(E),
}

impl<E> From<String> for Stop<E> {
    fn from(s: String) -> Self {
        Stop::Pattern(s)
    }
}

type R<T, E> = Result<T, Stop<E>>;

pub struct Matcher<'a, E, F: FnMut() -> Result<(), E>> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    capture: [(usize, Len); MAX_CAPTURES],
    depth: usize,
    steps: u32,
    tick: F,
}

fn err<T, E>(msg: &str) -> R<T, E> {
    Err(Stop::Pattern(msg.to_string()))
}

/// The C locale's character classes.
fn class_matches(c: u8, class: u8) -> bool {
    let res = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c < 32 || c == 127,
        b'd' => c.is_ascii_digit(),
        b'g' => (33..=126).contains(&c),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        // Deprecated in Lua, still understood.
        b'z' => c == 0,
        _ => return class == c,
    };
    if class.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

/// Whether the pattern has none of the characters that make it more than plain text.
pub fn no_specials(pat: &[u8]) -> bool {
    !pat.iter().any(|b| b"^$*+?.([%-".contains(b))
}

/// Where `needle` first occurs in `hay` at or after `from` (in linear time).
pub fn find_plain(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from);
    }
    memchr::memmem::find(hay.get(from..)?, needle).map(|i| i + from)
}

impl<'a, E, F: FnMut() -> Result<(), E>> Matcher<'a, E, F> {
    pub fn new(src: &'a [u8], pat: &'a [u8], tick: F) -> Self {
        Matcher {
            src,
            pat,
            level: 0,
            capture: [(0, Len::Unfinished); MAX_CAPTURES],
            depth: 0,
            steps: 0,
            tick,
        }
    }

    /// Tries to match the pattern from byte `p` of it at byte `s` of the subject; the end
    /// of the match. Captures are reset first.
    pub fn match_at(&mut self, s: usize, p: usize) -> R<Option<usize>, E> {
        self.level = 0;
        self.depth = 0;
        self.do_match(s, p)
    }

    fn step(&mut self) -> R<(), E> {
        self.steps += 1;
        if self.steps >= TICK_EVERY {
            self.steps = 0;
            (self.tick)().map_err(Stop::Tick)?;
        }
        Ok(())
    }

    fn do_match(&mut self, s: usize, p: usize) -> R<Option<usize>, E> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err("pattern too complex");
        }
        let r = self.match_here(s, p);
        self.depth -= 1;
        r
    }

    fn match_here(&mut self, mut s: usize, mut p: usize) -> R<Option<usize>, E> {
        let (src, pat) = (self.src, self.pat);
        loop {
            self.step()?;
            if p == pat.len() {
                return Ok(Some(s));
            }
            match pat[p] {
                b'(' => {
                    return if pat.get(p + 1) == Some(&b')') {
                        self.start_capture(s, p + 2, Len::Position)
                    } else {
                        self.start_capture(s, p + 1, Len::Unfinished)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == pat.len() => {
                    return Ok((s == src.len()).then_some(s));
                }
                b'%' if p + 1 < pat.len() && pat[p + 1] == b'b' => {
                    match self.match_balance(s, p + 2)? {
                        Some(next) => {
                            s = next;
                            p += 4;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                b'%' if p + 1 < pat.len() && pat[p + 1] == b'f' => {
                    p += 2;
                    if pat.get(p) != Some(&b'[') {
                        return err("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let prev = if s == 0 { 0 } else { src[s - 1] };
                    let cur = src.get(s).copied().unwrap_or(0);
                    if !self.bracket_matches(prev, p, ep - 1)
                        && self.bracket_matches(cur, p, ep - 1)
                    {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                b'%' if p + 1 < pat.len() && pat[p + 1].is_ascii_digit() => {
                    match self.match_capture(s, pat[p + 1])? {
                        Some(next) => {
                            s = next;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {}
            }
            let ep = self.class_end(p)?;
            let here = s < src.len() && self.single_matches(src[s], p, ep);
            match pat.get(ep) {
                Some(b'?') => {
                    if here {
                        if let Some(e) = self.do_match(s + 1, ep + 1)? {
                            return Ok(Some(e));
                        }
                    }
                    p = ep + 1;
                }
                Some(b'+') => {
                    return if here {
                        self.max_expand(s + 1, p, ep)
                    } else {
                        Ok(None)
                    };
                }
                Some(b'*') => return self.max_expand(s, p, ep),
                Some(b'-') => return self.min_expand(s, p, ep),
                _ => {
                    if !here {
                        return Ok(None);
                    }
                    s += 1;
                    p = ep;
                }
            }
        }
    }

    /// The end of the single-character class that starts at `p`.
    fn class_end(&self, mut p: usize) -> R<usize, E> {
        let pat = self.pat;
        let c = pat[p];
        p += 1;
        if c == b'%' {
            if p >= pat.len() {
                return err("malformed pattern (ends with '%')");
            }
            return Ok(p + 1);
        }
        if c == b'[' {
            if pat.get(p) == Some(&b'^') {
                p += 1;
            }
            loop {
                if p >= pat.len() {
                    return err("malformed pattern (missing ']')");
                }
                let cc = pat[p];
                p += 1;
                if cc == b'%' && p < pat.len() {
                    p += 1;
                }
                if pat.get(p) == Some(&b']') {
                    return Ok(p + 1);
                }
            }
        }
        Ok(p)
    }

    fn single_matches(&self, c: u8, p: usize, ep: usize) -> bool {
        match self.pat[p] {
            b'.' => true,
            b'%' => class_matches(c, self.pat[p + 1]),
            b'[' => self.bracket_matches(c, p, ep - 1),
            lit => lit == c,
        }
    }

    /// `[set]` from `p` (its `[`) to `ec` (its `]`).
    fn bracket_matches(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let pat = self.pat;
        let mut sig = true;
        if pat[p + 1] == b'^' {
            sig = false;
            p += 1;
        }
        p += 1;
        while p < ec {
            if pat[p] == b'%' {
                p += 1;
                if p < pat.len() && class_matches(c, pat[p]) {
                    return sig;
                }
            } else if pat.get(p + 1) == Some(&b'-') && p + 2 < ec {
                if pat[p] <= c && c <= pat[p + 2] {
                    return sig;
                }
                p += 2;
            } else if pat[p] == c {
                return sig;
            }
            p += 1;
        }
        !sig
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> R<Option<usize>, E> {
        let mut i = 0;
        while s + i < self.src.len() && self.single_matches(self.src[s + i], p, ep) {
            i += 1;
            self.step()?;
        }
        loop {
            if let Some(e) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(e));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> R<Option<usize>, E> {
        loop {
            if let Some(e) = self.do_match(s, ep + 1)? {
                return Ok(Some(e));
            }
            if s < self.src.len() && self.single_matches(self.src[s], p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: Len) -> R<Option<usize>, E> {
        if self.level >= MAX_CAPTURES {
            return err("too many captures");
        }
        self.capture[self.level] = (s, what);
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> R<Option<usize>, E> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == Len::Unfinished)
        else {
            return err("invalid pattern capture");
        };
        self.capture[l].1 = Len::Bytes(s - self.capture[l].0);
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.capture[l].1 = Len::Unfinished;
        }
        Ok(r)
    }

    fn match_balance(&mut self, s: usize, p: usize) -> R<Option<usize>, E> {
        if p + 1 >= self.pat.len() {
            return err("malformed pattern (missing arguments to '%b')");
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        if self.src.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1;
        let mut i = s + 1;
        while i < self.src.len() {
            self.step()?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
            i += 1;
        }
        Ok(None)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> R<Option<usize>, E> {
        let l = (digit as usize).wrapping_sub(b'1' as usize);
        if l >= self.level || self.capture[l].1 == Len::Unfinished {
            return Err(Stop::Pattern(format!(
                "invalid capture index %{}",
                l.wrapping_add(1) as isize
            )));
        }
        let (start, len) = self.capture[l];
        let Len::Bytes(len) = len else {
            return Ok(None);
        };
        let src = self.src;
        if src.len() - s >= len && src[start..start + len] == src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    /// How many values a match gives: its captures, or the whole match when it has none
    /// (and `whole` is asked for).
    pub fn count(&self, whole: bool) -> usize {
        if self.level == 0 && whole {
            1
        } else {
            self.level
        }
    }

    /// The text of the match `s..e`.
    pub fn whole(&self, s: usize, e: usize) -> &'a [u8] {
        &self.src[s..e]
    }

    /// Capture `i` of the match `s..e` (the whole match for 0 when there are none).
    pub fn capture(&self, i: usize, s: usize, e: usize) -> Result<Capture<'a>, String> {
        if i >= self.level {
            if i != 0 {
                return Err(format!("invalid capture index %{}", i + 1));
            }
            return Ok(Capture::Text(&self.src[s..e]));
        }
        let (start, len) = self.capture[i];
        match len {
            Len::Unfinished => Err("unfinished capture".into()),
            Len::Position => Ok(Capture::Position(start + 1)),
            Len::Bytes(n) => Ok(Capture::Text(&self.src[start..start + n])),
        }
    }
}
