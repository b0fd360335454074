//! `Config::load` (what `vigia status` and `vigia silence` use to find `state_dir`)
//! parses and validates without running any script; `load_and_build` loads them.

use vigia_config::{Config, Registry};

#[test]
fn load_runs_no_script_and_build_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    // If Lua ran this at load, it would raise at once.
    std::fs::write(dir.path().join("rb.lua"), "error('ran at load')\n").unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "engine: { state_dir: st }\nrunbooks:\n  rb: { script: rb.lua }\nchecks: []\n",
    )
    .unwrap();
    let config = Config::load(&file).expect("load reads no script");
    assert!(config.engine.state_dir.ends_with("st"));
    let errors = Config::load_and_build(&file, &Registry::builtin())
        .err()
        .expect("the build loads the runbook")
        .to_string();
    assert!(
        errors.contains("runbooks.rb.script") && errors.contains("ran at load"),
        "{errors}"
    );
    assert!(
        errors.contains("config.yaml:3:"),
        "with its position: {errors}"
    );
}
