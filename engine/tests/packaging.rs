//! packaging/: the unit (the settings the engine relies on, systemd's own verdict and
//! its exposure score, Lua and TLS without writable-executable memory) and the Debian
//! package (built, linted, installed, used and purged on this machine).

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/vigia.service");
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn the_unit_has_what_the_engine_relies_on() {
    let u = unit();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=",
        "User=vigia",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/vigia",
        "AmbientCapabilities=CAP_NET_RAW",
        "ExecStart=/usr/bin/vigia run",
        "SystemCallFilter=@system-service",
        "SystemCallArchitectures=native",
        "MemoryDenyWriteExecute=yes",
        "ProtectClock=yes",
        "ProtectKernelLogs=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "UMask=0077",
        "LockPersonality=yes",
    ] {
        assert!(u.lines().any(|l| l.starts_with(line)), "missing `{line}`");
    }
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    // scripts/test.sh installs it (Debian package `systemd`): missing is a failure.
    let found = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        found.is_ok(),
        "systemd-analyze is missing: install the Debian package `systemd` (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vigia.service");
    // verify insists that ExecStart's program exists: point it at the built binary.
    std::fs::write(
        &copy,
        unit().replace("/usr/bin/vigia", env!("CARGO_BIN_EXE_vigia")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The exposure score `systemd-analyze security` gives the unit: 4.1 before the unit was
/// hardened (README, "Running under systemd"); it must stay below.
#[test]
fn the_unit_is_exposed_less_than_before() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vigia.service");
    std::fs::write(&copy, unit()).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (scripts/test.sh installs systemd)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for vigia.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    println!("exposure score: {score}");
    assert!(score < 4.1, "{score}: {text}");
}

/// `MemoryDenyWriteExecute=yes` in the unit: Lua (PUC Lua, no JIT) and the TLS stack
/// (rustls) never map memory both writable and executable. The kernel's own form of that
/// rule (prctl PR_SET_MDWE, Linux 6.3+, kept across exec) is set before `vigia check`
/// runs a Lua check and an https check against a real TLS server (openssl s_server).
#[test]
fn lua_and_tls_run_without_writable_executable_memory() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("openssl").current_dir(d).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
    ]));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new("openssl")
            .current_dir(d)
            .args([
                "s_server", "-quiet", "-www", "-cert", "cert.pem", "-key", "key.pem",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl s_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::create_dir(d.join("checks")).unwrap();
    std::fs::write(
        d.join("checks/probe.lua"),
        r#"return {
  check = function(ctx)
    local s = string.rep("ab", 100)
    local _, n = string.gsub(s, "a(b)", "%1")
    local co = coroutine.wrap(function() coroutine.yield(n * 2) end)
    local doubled = co()
    return { ok = n == 100 and doubled == 200, message = "patterns and coroutines: " .. n }
  end,
}
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("config.yaml"),
        format!(
            "engine:\n  state_dir: state\nhttp:\n  enabled: false\nchecks:\n  - name: probe\n    type: lua\n    script: checks/probe.lua\n  - name: tls\n    type: http\n    url: https://127.0.0.1:{port}/\n    tls_verify: false\n    timeout: 5s\n"
        ),
    )
    .unwrap();
    let mdwe = |cmd: &mut Command| {
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                const PR_SET_MDWE: libc::c_int = 65;
                const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
                if libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    };
    // The rule holds: a program that asks for such memory is refused it.
    let mut jit = Command::new("python3");
    jit.args([
        "-c",
        "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)",
    ]);
    mdwe(&mut jit);
    let out = jit
        .output()
        .expect("prctl(PR_SET_MDWE) needs Linux 6.3 or later");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "W+X memory should be refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in ["probe", "tls"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigia"));
        cmd.current_dir(d)
            .args(["check", check, "-c", "config.yaml"]);
        mdwe(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{check} under MDWE: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if check == "tls" {
            assert!(text.contains("HTTP 200"), "{text}");
        }
    }
}

/// Purges the package when the test ends, however it ends.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "vigia"]).output();
    }
}

/// scripts/deb.sh builds the package; lintian finds no error in it (and only the
/// warnings explained below); it holds what the README says; `dpkg -i` installs it,
/// the installed engine validates the shipped config and says its version and commit;
/// `dpkg --purge` leaves none of its files behind.
#[test]
fn the_debian_package_builds_lints_installs_and_purges() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("scripts/deb.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deb.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        deb.ends_with(&format!("vigia_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"))),
        "{deb}"
    );

    let lint = Command::new("lintian")
        .args(["--allow-root", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("lintian (scripts/test.sh installs it)");
    let lint = String::from_utf8_lossy(&lint.stdout).to_string();
    // The warnings left, each for a reason:
    let explained = [
        // A Debian upload's first changelog entry closes the ITP bug; this package is
        // not uploaded to Debian, there is no such bug.
        "W: vigia: initial-upload-closes-no-bugs",
    ];
    for line in lint
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
    {
        assert!(
            explained.iter().any(|e| line.starts_with(e)),
            "lintian: {line}\n{lint}"
        );
    }

    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    let files: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| !p.ends_with('/'))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    for want in [
        "/usr/bin/vigia",
        "/usr/bin/vigia-mock",
        "/usr/lib/systemd/system/vigia.service",
        "/usr/lib/sysusers.d/vigia.conf",
        "/etc/vigia/config.yaml",
        "/etc/vigia/ips.txt",
        "/usr/share/vigia/checks/galera_sync.lua",
        "/usr/share/vigia/runbooks/galera_far_node.lua",
        "/usr/share/bash-completion/completions/vigia",
        "/usr/share/zsh/vendor-completions/_vigia",
        "/usr/share/fish/vendor_completions.d/vigia.fish",
        "/usr/share/man/man1/vigia.1.gz",
        "/usr/share/man/man1/vigia-mock.1.gz",
        "/usr/share/doc/vigia/copyright",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "{want} is missing:\n{listing}"
        );
    }
    assert!(
        !files.iter().any(|f| f.starts_with("/usr/lib/debug")),
        "debug info goes to the -dbgsym package"
    );
    let conffiles = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --ctrl-tarfile {deb} | tar -xO ./conffiles"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout),
        "/etc/vigia/config.yaml\n/etc/vigia/ips.txt\n"
    );
    // The binary is stripped: a fraction of the ~100 MB the release build makes.
    let size = std::fs::metadata(&deb).unwrap().len();
    println!("{deb}: {size} bytes");
    assert!(size < 30 << 20, "{size}");

    let _purge = Purge;
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&["dpkg", "-i", &deb]);
    let valid = run(&["/usr/bin/vigia", "validate", "-c", "/etc/vigia/config.yaml"]);
    assert!(valid.contains("OK"), "{valid}");
    let version = run(&["/usr/bin/vigia", "--version"]);
    assert_eq!(
        version.trim(),
        format!(
            "vigia {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("VIGIA_COMMIT")
        )
    );
    run(&["id", "vigia"]);
    // As if the service had run: its state directory (the unit's StateDirectory).
    std::fs::create_dir_all("/var/lib/vigia").unwrap();
    std::fs::write("/var/lib/vigia/state.redb", b"state").unwrap();
    run(&["dpkg", "--purge", "vigia"]);
    for f in &files {
        assert!(
            !Path::new(f).exists(),
            "{f} is still there after dpkg --purge"
        );
    }
    for gone in [
        "/etc/vigia",
        "/etc/systemd/system/multi-user.target.wants/vigia.service",
    ] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is still there after dpkg --purge"
        );
    }
}
