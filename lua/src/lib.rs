//! Lua-scripted checks for Vigia.
//!
//! - [`LuaFactory`] builds the checks of `type: lua` config entries
//!   (`script: checks/x.lua`, `params: {...}`), and [`LuaFactory::discover`] those of
//!   scripts in `checks/` that declare their own `name`.
//! - `vm.rs`: the one constructor of a sandboxed Lua 5.4 state and the budget that
//!   stops runaway scripts; `host.rs` (+ `mysql.rs`): the async host API;
//!   `script.rs`: loading a script and reading its declaration; `check.rs`: a script
//!   running as a [`vigia_api::Check`].
//!
//! Nothing here knows the scheduler, the status map or alerting: a script is a check
//! like any other. The engine persists `ctx.state` through `Check::take_state`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use vigia_api::yaml::join_path;
use vigia_api::{
    BrokenFile, BuildContext, Built, BuiltCheck, CheckFactory, ConfigError, ConfigErrors, Node,
};

pub mod args;
pub mod budget;
pub mod check;
pub mod host;
pub mod mysql;
pub mod pattern;
pub mod runbook;
pub mod script;
mod strings;
pub mod vm;

pub use check::LuaCheck;
pub use host::{HostClients, HostEnv};
pub use script::Loaded;

/// The plugin keys of a `type: lua` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuaConfig {
    /// The script, relative to config.yaml: `checks/galera_sync.lua`.
    pub script: PathBuf,
    /// Values for `ctx.params`, laid over the script's own `params`.
    #[serde(default)]
    pub params: Option<serde_json::Value>,
    /// The script's memory limit: `16MiB` (default), `512KiB`, `1GiB`.
    #[serde(default)]
    pub memory_limit: Option<String>,
}

/// Parses `16MiB`, `512KiB`, `1GiB` (binary units; `M`, `MB` are read the same).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[derive(Default)]
pub struct LuaFactory {
    clients: Arc<HostClients>,
}

impl LuaFactory {
    fn env(&self, ctx: &BuildContext) -> Arc<HostEnv> {
        Arc::new(HostEnv {
            hostname: ctx.hostname.clone(),
            commands: ctx.commands.clone(),
            clients: self.clients.clone(),
        })
    }

    /// Loads a script and makes one check of it.
    pub fn build_check(
        &self,
        file: &Path,
        name: Option<&str>,
        params: Option<&serde_json::Value>,
        memory_limit: usize,
        ctx: &BuildContext,
    ) -> Result<BuiltCheck, String> {
        let display = display_path(file, &ctx.config_dir);
        let loaded = script::load(file, &display, self.env(ctx), memory_limit)?;
        let name = match (name, &loaded.name) {
            (Some(n), _) => n.to_string(),
            (None, Some(n)) => n.clone(),
            (None, None) => return Err(format!("{display}: the script declares no `name`")),
        };
        let settings = loaded.settings.clone();
        let version = loaded.version
            ^ script::hash(params.map(|p| p.to_string()).unwrap_or_default().as_bytes())
            ^ memory_limit as u64;
        let check = LuaCheck::new(loaded, &name, params, &ctx.hostname)?;
        Ok(BuiltCheck {
            source: Some(file.to_path_buf()),
            version,
            settings,
            ..BuiltCheck::new(name, Arc::new(check))
        })
    }

    /// The scripts of `dir` that declare a `name`: each runs as a check of its own.
    /// Scripts without a name are left for config entries. Scripts that fail to load
    /// are returned as broken.
    /// `skip`: scripts that config entries use; they run only as those entries.
    pub fn discover(&self, dir: &Path, ctx: &BuildContext, skip: &HashSet<PathBuf>) -> Built {
        let mut built = Built::default();
        let skip: HashSet<PathBuf> = skip.iter().map(|p| canonical(p)).collect();
        for file in scripts_in(dir) {
            if skip.contains(&canonical(&file)) {
                continue;
            }
            let display = display_path(&file, &ctx.config_dir);
            match script::load(&file, &display, self.env(ctx), vm::DEFAULT_MEMORY_LIMIT) {
                Ok(loaded) if loaded.name.is_some() => {
                    let name = loaded.name.clone().unwrap_or_default();
                    let settings = loaded.settings.clone();
                    let version = loaded.version;
                    match LuaCheck::new(loaded, &name, None, &ctx.hostname) {
                        Ok(check) => built.checks.push(BuiltCheck {
                            source: Some(file.clone()),
                            version,
                            settings,
                            ..BuiltCheck::new(name, Arc::new(check))
                        }),
                        Err(error) => built.broken.push(BrokenFile {
                            file: file.clone(),
                            error,
                        }),
                    }
                }
                Ok(_) => {}
                Err(error) => built.broken.push(BrokenFile {
                    file: file.clone(),
                    error,
                }),
            }
            built.files.push(file);
        }
        built
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The `*.lua` files of a directory, sorted; editors' temporary files are skipped.
pub fn scripts_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| is_script(p))
        .collect();
    files.sort();
    files
}

/// A script file, not an editor's backup or lock file (`.#x.lua`, `x.lua~`).
pub fn is_script(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.ends_with(".lua") && !name.starts_with('.') && p.is_file()
}

/// A path as operators see it: relative to config.yaml's directory when inside it.
pub fn display_path(file: &Path, config_dir: &Path) -> String {
    let rel = file.strip_prefix(config_dir).unwrap_or(file);
    let s = rel.display().to_string();
    s.strip_prefix("./").map(str::to_string).unwrap_or(s)
}

impl CheckFactory for LuaFactory {
    fn kind(&self) -> &'static str {
        "lua"
    }

    fn summary(&self) -> &'static str {
        "runs a Lua script (script: checks/x.lua, params: {...}); see checks/README.md"
    }

    fn build(
        &self,
        name: &str,
        params: &Node,
        path: &str,
        ctx: &BuildContext,
    ) -> Result<Built, ConfigErrors> {
        let cfg: LuaConfig = params.deserialize(path)?;
        let mut errors = Vec::new();
        if let Some(p) = &cfg.params {
            if !p.is_object() {
                errors.push(ConfigError::new(
                    &join_path(path, "params"),
                    "must be a mapping of names to values (they become ctx.params)",
                ));
            }
        }
        let memory_limit = match &cfg.memory_limit {
            None => vm::DEFAULT_MEMORY_LIMIT,
            Some(s) => match parse_size(s) {
                Some(n) if n >= 256 << 10 => n,
                Some(_) => {
                    errors.push(ConfigError::new(
                        &join_path(path, "memory_limit"),
                        format!("{s} is too small (at least 256KiB)"),
                    ));
                    0
                }
                None => {
                    errors.push(ConfigError::new(
                        &join_path(path, "memory_limit"),
                        format!("`{s}` is not a size: write e.g. 16MiB or 512KiB"),
                    ));
                    0
                }
            },
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let file = ctx.resolve(&cfg.script);
        let mut built = Built {
            files: vec![file.clone()],
            ..Built::default()
        };
        match self.build_check(&file, Some(name), cfg.params.as_ref(), memory_limit, ctx) {
            Ok(c) => built.checks.push(c),
            Err(error) => built.broken.push(BrokenFile { file, error }),
        }
        Ok(built)
    }
}
