//! A run's budget: its clock, deadline and memory limit, the [`Runaway`] error the
//! instruction hook raises past the deadline, and what stops a run there
//! ([`past_deadline`], with the script's line). Its own module so that the host API
//! (`host.rs`, `mysql.rs`), the string functions (`strings.rs`) and the state
//! constructor (`vm.rs`) all use it without importing each other.

use mlua::Lua;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the hook looks at the clock.
pub const HOOK_EVERY: u32 = 1000;
/// How long a script runs before it lets other checks run.
pub const SLICE: Duration = Duration::from_millis(1);
/// How long a run may go on without a break: where it cannot yield every [`SLICE`]
/// (inside a coroutine of its own, or in a Lua function called from C such as a
/// `table.sort` comparator), it is stopped after this, so no script holds the thread
/// for longer, whatever its timeout.
pub const UNBROKEN: Duration = Duration::from_millis(200);
/// How long a script's top level may run when it is loaded.
pub const LOAD_BUDGET: Duration = Duration::from_secs(1);
/// Memory a script may use unless its config says otherwise.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 20;

/// The error that stops a runaway script. It carries the message.
#[derive(Debug)]
pub struct Runaway(pub String);

impl std::fmt::Display for Runaway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Runaway {}

/// Whether a Lua error is a [`Runaway`].
pub fn runaway_of(e: &mlua::Error) -> Option<&Runaway> {
    match e {
        mlua::Error::ExternalError(x) => x.downcast_ref::<Runaway>(),
        mlua::Error::CallbackError { cause, .. } => runaway_of(cause),
        mlua::Error::WithContext { cause, .. } => runaway_of(cause),
        _ => None,
    }
}

/// A run's future that marks each resumption: the hook measures the stretch since the
/// last one, and so knows when a yield it asked for could not happen.
pub struct Resumed<F> {
    inner: std::pin::Pin<Box<F>>,
    budget: std::sync::Arc<Budget>,
}

impl<F> Resumed<F> {
    pub fn new(inner: F, budget: std::sync::Arc<Budget>) -> Self {
        Resumed {
            inner: Box::pin(inner),
            budget,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Resumed<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let now = self.budget.now();
        self.budget.slice_start.store(now, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

/// The clock of the current run, shared between the check and its state's hook.
pub struct Budget {
    pub(crate) base: Instant,
    /// ns since `base`; `u64::MAX` when no run is armed.
    pub(crate) deadline: AtomicU64,
    /// The limit of the armed run as the operator set it, for the message.
    pub(crate) allowed_ms: AtomicU64,
    /// The run's own coroutine (a `lua_State` pointer); 0 = never yield.
    pub(crate) main_thread: AtomicUsize,
    /// ns since `base` of the last yield or of the run's start.
    pub(crate) slice_start: AtomicU64,
    /// The host call in flight, for a timeout message.
    pub in_call: Mutex<Option<String>>,
    /// The script's path as shown to operators (`checks/web.lua`), for its log lines.
    pub script: String,
    /// `guard.stop` tells the sandbox's pcall & co. to let every error through.
    pub(crate) guard: mlua::Table,
    /// Set once the run passed its deadline: where it was, for the message.
    pub stopped: Mutex<Option<String>>,
    /// The check it runs as; empty while the script is being loaded.
    pub check: Mutex<String>,
    /// The state's memory limit in bytes, for the message when it is reached.
    pub memory_limit: usize,
}

impl Budget {
    pub(crate) fn new(script: &str, memory_limit: usize, guard: mlua::Table) -> Self {
        Budget {
            guard,
            memory_limit,
            script: script.to_string(),
            check: Mutex::new(String::new()),
            base: Instant::now(),
            deadline: AtomicU64::new(u64::MAX),
            allowed_ms: AtomicU64::new(0),
            main_thread: AtomicUsize::new(0),
            slice_start: AtomicU64::new(0),
            in_call: Mutex::new(None),
            stopped: Mutex::new(None),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Starts a run that may take `allowed`; `thread` is its coroutine (0: none).
    pub fn arm(&self, allowed: Duration, thread: usize) {
        self.arm_shown(allowed, allowed, thread);
    }

    /// As `arm`, with the limit the operator set (`timeout: 1s`) for the message, when
    /// the run itself is given a little less so that its own message wins.
    pub fn arm_shown(&self, allowed: Duration, shown: Duration, thread: usize) {
        let now = self.now();
        self.allowed_ms
            .store(shown.as_millis() as u64, Ordering::Relaxed);
        self.deadline.store(
            now.saturating_add(allowed.as_nanos() as u64),
            Ordering::Relaxed,
        );
        self.main_thread.store(thread, Ordering::Relaxed);
        self.slice_start.store(now, Ordering::Relaxed);
    }

    /// Ends a run: the host call it was waiting for and, if it ran past its deadline,
    /// where it was stopped; then disarms.
    pub fn finish(&self) -> (Option<String>, Option<String>) {
        let in_call = self
            .in_call
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.disarm();
        (in_call, stopped)
    }

    pub fn disarm(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = self.guard.raw_set("stop", false);
        self.deadline.store(u64::MAX, Ordering::Relaxed);
        self.main_thread.store(0, Ordering::Relaxed);
        *self.in_call.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether a check run is under way (not a load).
    pub fn in_run(&self) -> bool {
        self.main_thread.load(Ordering::Relaxed) != 0
    }

    pub fn allowed(&self) -> Duration {
        Duration::from_millis(self.allowed_ms.load(Ordering::Relaxed))
    }
}

/// Past the run's deadline: records where the run was stopped (once) and tells the
/// sandbox's pcall & co. to let every error through; the error that stops it.
pub fn past_deadline(lua: &Lua, budget: &Budget) -> Option<mlua::Error> {
    if budget.now() < budget.deadline.load(Ordering::Relaxed) {
        return None;
    }
    let msg = if budget.in_run() {
        format!(
            "{}: stopped at its timeout of {}: the script was still running (an endless loop?)",
            script_position(lua),
            vigia_api::Dur(budget.allowed())
        )
    } else {
        format!(
            "{}: stopped after {}: a script's top level must finish quickly when it loads (an endless loop?)",
            script_position(lua),
            vigia_api::Dur(budget.allowed())
        )
    };
    let mut stopped = budget.stopped.lock().unwrap_or_else(|p| p.into_inner());
    if stopped.is_none() {
        *stopped = Some(msg.clone());
        let _ = budget.guard.raw_set("stop", true);
    }
    Some(mlua::Error::external(Runaway(msg)))
}

/// `checks/x.lua:12`: the innermost frame of the script itself (not Vigia's wrappers).
pub fn script_position(lua: &Lua) -> String {
    for level in 0..64 {
        let frame = lua.inspect_stack(level, |d| {
            let src = d.source();
            (
                src.source.map(|s| s.to_string()).unwrap_or_default(),
                src.short_src.map(|s| s.to_string()).unwrap_or_default(),
                d.current_line(),
            )
        });
        let Some((source, short, line)) = frame else {
            break;
        };
        if source.starts_with('@') {
            if let Some(line) = line {
                return format!("{short}:{line}");
            }
        }
    }
    "the script".into()
}
