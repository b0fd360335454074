//! `vigia replay` over a day of 1 000 checks at 10 s (8.64 M recorded runs): how long
//! the replay takes under one config, and under two (what if), which read the files
//! once. The recording is written first (not timed), as the engine writes it: 8 files
//! of JSON lines, each check failing for a few minutes once or twice a day.
//!
//! `cargo bench -p vigia --bench replay [-- --checks N --hours H]`

use std::io::Write;
use std::time::Instant;

use vigia_api::CheckOutcome;
use vigia_engine::replay::{feed, Side};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(dir: &std::path::Path, name: &str, checks: u64, threshold: u32) -> std::path::PathBuf {
    let mut y = String::from(
        "engine: { hostname: bench }\nalerting: { timezone: UTC, group_wait: 2s }\nchannels:\n  console: { type: console }\nchecks:\n",
    );
    for i in 0..checks {
        y.push_str(&format!(
            "  - {{ name: c{i}, type: tcp, host: 127.0.0.1, port: {}, interval: 10s, threshold: {threshold} }}\n",
            1024 + i
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, y).expect("config");
    path
}

fn main() {
    let checks = arg("--checks", 1000);
    let hours = arg("--hours", 24);
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("record");
    std::fs::create_dir_all(&record).expect("record dir");
    let base = config(dir.path(), "config.yaml", checks, 3);
    let other = config(dir.path(), "other.yaml", checks, 5);
    // Written as the engine writes it (`record::line`), one file per 3 hours.
    let t0: u64 = 1_796_083_200_000; // 2026-12-01 00:00 UTC
    let steps = hours * 360;
    let per_file = (steps / 8).max(1);
    let started = Instant::now();
    let mut runs = 0u64;
    let mut out = None;
    for step in 0..steps {
        if step % per_file == 0 {
            let at = t0 + step * 10_000;
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(
                    record.join(format!("record-{at:013}-{:04}.jsonl", step / per_file)),
                )
                .expect("file"),
            );
            writeln!(
                f,
                "{{\"vigia_record\":1,\"version\":\"bench\",\"host\":\"bench\",\"started\":{at}}}"
            )
            .expect("write");
            out = Some(f);
        }
        let f = out.as_mut().expect("a file");
        for c in 0..checks {
            let at = t0 + step * 10_000 + c * 10_000 / checks;
            // Each check fails for 4 runs (40 s) at one moment of its own, and for 30
            // runs (5 min) at another: one outage below threshold 5, one above.
            let phase = (c * 7919) % steps;
            let down = (step >= phase && step < phase + 4)
                || (step >= (phase + steps / 2) % steps && step < (phase + steps / 2) % steps + 30);
            let outcome = if down {
                CheckOutcome::critical("connection refused".to_string())
            } else {
                CheckOutcome::ok("connected in 0.2 ms".to_string())
            };
            f.write_all(&vigia_engine::record::line(
                &format!("c{c}"),
                &outcome,
                0.21,
                at,
            ))
            .expect("write");
            runs += 1;
        }
    }
    drop(out);
    let bytes: u64 = vigia_engine::record::files(&record)
        .expect("files")
        .iter()
        .map(|(_, n)| n)
        .sum();
    println!(
        "recording: {runs} runs of {checks} checks over {hours} h, {:.0} MiB in 8 files (written in {:.1} s)",
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    for (label, configs) in [
        ("one config", vec![&base]),
        ("what if (two configs)", vec![&base, &other]),
    ] {
        let mut sides: Vec<Side> = configs
            .iter()
            .map(|c| Side::load(c, None).expect("config"))
            .collect();
        let started = Instant::now();
        let problems = feed(&record, &mut sides, None, None);
        let secs = started.elapsed().as_secs_f64();
        assert!(problems.is_empty(), "{problems:?}");
        let messages: Vec<usize> = sides.iter().map(|s| s.replay.messages.len()).collect();
        println!(
            "replay, {label}: {secs:.2} s for {runs} runs ({:.2} M runs/s); messages per config: {messages:?}",
            runs as f64 / secs / 1e6
        );
    }
}
