//! Hostile scripts: no form holds the thread. Each runs with a 2 s timeout on a single
//! thread beside a canary script that runs every 10 ms; a form that froze the thread
//! (as these all did once) would hold the canary for its whole timeout or for ever.
//! Each must end within its own timeout, and the canary never wait much longer than
//! the longest unbroken stretch a script is allowed (200 ms).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// (name, body, what the outcome's message says; "" for OK).
const FORMS: &[(&str, &str, &str)] = &[
    ("__gc that loops", "setmetatable({}, { __gc = function() while true do end end }) return { ok = true }", "__gc finalizers are not available to scripts"),
    ("__gc through a metatable shared later", "local mt = { __gc = function() while true do end end } local t = setmetatable({}, {}) setmetatable(t, mt)", "__gc finalizers are not available"),
    ("__close that loops", "do local x <close> = setmetatable({}, { __close = function() while true do end end }) end return { ok = true }", "stopped at its timeout of 2s"),
    ("table.sort comparator that loops", "local t = {} for i = 1, 100 do t[i] = i end table.sort(t, function(a, b) while true do end end)", "without a break inside a function called by the string or table library"),
    ("gsub callback that loops", "string.gsub('abc', '.', function(c) while true do end end)", "without a break inside a function called by the string or table library"),
    ("gsub table with an __index that loops", "string.gsub('abc', '.', setmetatable({}, { __index = function() while true do end end }))", "without a break"),
    ("pathological find", "local s = string.rep('a', 5000) return { ok = s:find('.-.-.-.-.-.-.-.-.-.-.-.-b') ~= nil }", "string.find matched for 200ms without a break"),
    ("pathological match", "return { ok = string.match(string.rep('a', 3000), '(.*)(.*)(.*)(.*)(.*)b') ~= nil }", "string.match matched for 200ms"),
    ("pathological gmatch", "for _ in string.gmatch(string.rep('a', 3000), '.-.-.-.-.-b') do end", "string.gmatch matched for 200ms"),
    ("pathological gsub", "string.gsub(string.rep('a', 3000), '.-.-.-.-.-b', 'x')", "string.gsub matched for 200ms"),
    ("string.rep of nothing", "return { ok = #string.rep('', math.maxinteger) == 0 }", ""),
    ("string.rep with an empty separator", "return { ok = #('').rep('', 1 << 62, '') == 0 }", ""),
    ("string.rep as big as memory", "local s = string.rep('x', 1 << 40)", "checks/t.lua:3: resulting string too large"),
    ("pcall recursion bomb", "local function f() pcall(f) f() end f()", "calls nested deeper than 2000"),
    ("plain recursion", "local function f() return 1 + f() end f()", "calls nested deeper than 2000"),
    ("coroutine recursion", "local function f() coroutine.wrap(f)() end f()", "C stack overflow"),
];

#[tokio::test(flavor = "current_thread")]
async fn no_hostile_form_holds_the_thread() {
    let canary = lua_check(&body("return { ok = true }")).unwrap();
    let mut failed = Vec::new();
    for (name, code, want) in FORMS {
        let c = lua_check(&body(code)).unwrap();
        let start = Instant::now();
        let done = std::cell::Cell::new(false);
        let hostile = async {
            let o = run(&c, Duration::from_secs(2)).await;
            done.set(true);
            (o, start.elapsed())
        };
        let watch = async {
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            while !done.get() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                assert!(run(&canary, Duration::from_secs(1)).await.is_ok());
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        };
        let ((o, took), longest) = tokio::join!(hostile, watch);
        let said = if want.is_empty() {
            o.is_ok()
        } else {
            o.message.contains(want)
        };
        // A message is read at 3 a.m.: the script's position once, not once per level.
        let said = said && !o.message.contains("t.lua:3: checks/t.lua:3:");
        if !said || took > Duration::from_secs(3) || longest > Duration::from_millis(900) {
            failed.push(format!(
                "{name}: ended after {took:?}, canary held up to {longest:?}: {:?} {}",
                o.severity, o.message
            ));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}
