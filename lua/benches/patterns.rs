//! Lua patterns: Vigia's step-counted matcher (`pattern.rs`, in a sandboxed state) against
//! Lua's own C string library (a plain state with the same instruction hook), on the
//! pattern work a check does. One sitting, alternately, best of five:
//! `cargo bench -p vigia-lua --bench patterns`.

use std::sync::Arc;
use std::time::Instant;

use mlua::{HookTriggers, Lua, VmState};
use vigia_lua::HostEnv;

const N: u64 = 100_000;

const WORK: &str = r#"
local N = ...
local s = "wsrep_local_state_comment\tSynced 2026-12-01T13:19:04Z Uptime: 1234 s key = value"
local n = 0
for _ = 1, N do
  if s:find("Synced", 1, true) then n = n + 1 end
  local k, v = s:match("(%w+) = (%w+)")
  local up = s:match("Uptime: (%d+) s")
  local t = s:gsub("%s+", " ")
  for _ in s:gmatch("%a+") do n = n + 1 end
  if s:find("^wsrep_(%w+)") then n = n + 1 end
  if k and v and up and t then n = n + 1 end
end
return n
"#;

fn time(lua: &Lua) -> (f64, i64) {
    let f = lua.load(WORK).into_function().unwrap();
    let start = Instant::now();
    let n: i64 = f.call(N).unwrap();
    (start.elapsed().as_nanos() as f64 / N as f64, n)
}

fn main() {
    let c = Lua::new();
    c.set_global_hook(HookTriggers::new().every_nth_instruction(1000), |_, _| {
        Ok(VmState::Continue)
    })
    .unwrap();
    let env = Arc::new(HostEnv {
        hostname: "bench".into(),
        commands: Arc::default(),
        clients: Arc::default(),
    });
    let vigia = vigia_lua::vm::new_vm(env, 64 << 20, "bench.lua").unwrap();
    let (mut best_c, mut best_v) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let (tc, nc) = time(&c);
        let (tv, nv) = time(&vigia.lua);
        assert_eq!(nc, nv, "the same answers");
        best_c = best_c.min(tc);
        best_v = best_v.min(tv);
    }
    println!("pattern work per iteration (find plain, 2 match, gsub, gmatch over 9 words, anchored find):");
    println!("  Lua's C string library: {best_c:.0} ns");
    println!(
        "  Vigia's matcher:        {best_v:.0} ns ({:+.0} %)",
        (best_v / best_c - 1.0) * 100.0
    );
}
