//! What every host function shares: named-argument checking ([`Args`], with "did you
//! mean" for unknown ones) and the in-flight marker of a call ([`InCall`]). Its own
//! module so that `host.rs` and `mysql.rs` both use it without importing each other.

use std::time::Duration;

use mlua::{Table, Value};
use vigia_api::yaml::did_you_mean;
use vigia_api::Dur;

use crate::budget::Budget;

/// Marks a host call as in flight (for the timeout message) until dropped.
pub struct InCall<'a>(&'a Budget);

impl<'a> InCall<'a> {
    pub fn new(budget: &'a Budget, what: String) -> Self {
        *budget.in_call.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
        InCall(budget)
    }
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        *self.0.in_call.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The named arguments of one host call: unknown ones are refused up front, then each
/// is read and checked by type and range.
pub struct Args {
    f: &'static str,
    t: Table,
    known: Vec<&'static str>,
}

impl Args {
    /// `known`: every argument the function takes; others are refused first, with a
    /// "did you mean", before any missing or wrong one is reported.
    pub fn new(
        f: &'static str,
        v: Value,
        example: &str,
        known: &[&'static str],
    ) -> Result<Args, String> {
        match v {
            Value::Table(t) => {
                let a = Args {
                    f,
                    t,
                    known: known.to_vec(),
                };
                a.refuse_unknown()?;
                Ok(a)
            }
            other => Err(format!(
                "{f}: expects a table of named arguments, e.g. {example}, got {}",
                other.type_name()
            )),
        }
    }

    fn get(&mut self, k: &'static str) -> Result<Value, String> {
        debug_assert!(self.known.contains(&k), "{k} is not declared");
        self.t
            .raw_get::<Value>(k)
            .map_err(|e| format!("{}: argument `{k}`: {e}", self.f))
    }

    fn bad(&self, k: &str, what: &str, got: &Value) -> String {
        format!(
            "{}: argument `{k}` must be {what}, got {}",
            self.f,
            describe(got)
        )
    }

    pub fn opt_str(&mut self, k: &'static str) -> Result<Option<String>, String> {
        match self.get(k)? {
            Value::Nil => Ok(None),
            Value::String(s) => Ok(Some(s.to_string_lossy())),
            Value::Integer(i) => Ok(Some(i.to_string())),
            other => Err(self.bad(k, "a string", &other)),
        }
    }

    pub fn opt_bytes(&mut self, k: &'static str) -> Result<Option<Vec<u8>>, String> {
        match self.get(k)? {
            Value::Nil => Ok(None),
            Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
            other => Err(self.bad(k, "a string", &other)),
        }
    }

    pub fn str(&mut self, k: &'static str) -> Result<String, String> {
        match self.opt_str(k)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(format!("{}: argument `{k}` is empty", self.f)),
            None => Err(format!("{}: argument `{k}` is missing", self.f)),
        }
    }

    pub fn opt_int(&mut self, k: &'static str, min: i64, max: i64) -> Result<Option<i64>, String> {
        let v = self.get(k)?;
        let n = match &v {
            Value::Nil => return Ok(None),
            Value::Integer(i) => *i,
            Value::Number(n) if n.fract() == 0.0 => *n as i64,
            _ => return Err(self.bad(k, &format!("a whole number {min}-{max}"), &v)),
        };
        if n < min || n > max {
            return Err(format!(
                "{}: argument `{k}` is {n}, out of range ({min}-{max})",
                self.f
            ));
        }
        Ok(Some(n))
    }

    /// A duration written as in config.yaml: "250ms", "2s".
    pub fn opt_dur(&mut self, k: &'static str, max: Duration) -> Result<Option<Duration>, String> {
        let v = self.get(k)?;
        let d = match &v {
            Value::Nil => return Ok(None),
            Value::String(s) => s
                .to_str()
                .ok()
                .and_then(|s| s.parse::<Dur>().ok())
                .ok_or_else(|| self.bad(k, "a duration such as \"2s\" or \"500ms\"", &v))?,
            Value::Integer(_) | Value::Number(_) => {
                return Err(format!(
                    "{}: argument `{k}` must be a duration with its unit, e.g. \"2s\" or \"500ms\", got {}",
                    self.f,
                    describe(&v)
                ))
            }
            _ => return Err(self.bad(k, "a duration such as \"2s\"", &v)),
        };
        let d = d.get();
        if d.is_zero() || d > max {
            return Err(format!(
                "{}: argument `{k}` {} is out of range (more than 0, at most {})",
                self.f,
                Dur(d),
                Dur(max)
            ));
        }
        Ok(Some(d))
    }

    pub fn opt_table(&mut self, k: &'static str) -> Result<Option<Table>, String> {
        match self.get(k)? {
            Value::Nil => Ok(None),
            Value::Table(t) => Ok(Some(t)),
            other => Err(self.bad(k, "a table", &other)),
        }
    }

    /// Refuses arguments the function does not take, with a "did you mean".
    fn refuse_unknown(&self) -> Result<(), String> {
        for pair in self.t.pairs::<Value, Value>() {
            let (k, _) = pair.map_err(|e| format!("{}: {e}", self.f))?;
            let name = match &k {
                Value::String(s) => s.to_string_lossy(),
                other => {
                    return Err(format!(
                        "{}: takes named arguments only, got a {} key (did you write `{}(a, b)` instead of `{}{{x = a}}`?)",
                        self.f,
                        other.type_name(),
                        self.f,
                        self.f
                    ))
                }
            };
            if !self.known.contains(&name.as_str()) {
                let hint = match did_you_mean(&name, self.known.iter().copied()) {
                    Some(best) => format!(" (did you mean `{best}`?)"),
                    None => format!(" (its arguments are: {})", self.known.join(", ")),
                };
                return Err(format!("{}: unknown argument `{name}`{hint}", self.f));
            }
        }
        Ok(())
    }
}

/// `string "abc"`, `number 3`, `table`, for argument errors.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string \"{}\"", s.to_string_lossy()),
        Value::Integer(i) => format!("number {i}"),
        Value::Number(n) => format!("number {n}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Nil => "nil".into(),
        other => other.type_name().to_string(),
    }
}
