#!/usr/bin/env python3
"""Soak: N tcp checks for a while, a tenth of their targets flapping, a reload every
minute and a SIGHUP storm now and then. Prints RSS and descriptor counts over time and
whether every transition the engine logged was delivered exactly once (to a webhook
receiver of its own). Standard library only; run through scripts/soak.sh.

  soak.py VIGIA_BIN --checks 10000 --minutes 30 [--warmup 5]
"""

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORTS = 500  # targets; checks share them (each check has its own name)


class Receiver(BaseHTTPRequestHandler):
    delivered = Counter()
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        items = doc.get("items") or []
        with Receiver.lock:
            for it in items:
                key = (it.get("check"), it.get("transition") or it.get("state"), it.get("at"))
                Receiver.delivered[key] += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class Targets:
    """PORTS listeners; a tenth of them close and open again on their own rhythm."""

    def __init__(self):
        self.servers = {}
        self.ports = []

    async def start(self):
        for _ in range(PORTS):
            srv = await asyncio.start_server(self._conn, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            self.ports.append(port)
            self.servers[port] = srv

    async def _conn(self, reader, writer):
        writer.close()

    async def reopen(self):
        for port, srv in list(self.servers.items()):
            if srv is None:
                try:
                    self.servers[port] = await asyncio.start_server(self._conn, "127.0.0.1", port)
                except OSError:
                    pass

    async def flap(self, stop):
        flappers = self.ports[: PORTS // 10]
        while not stop.is_set():
            port = random.choice(flappers)
            srv = self.servers.get(port)
            if srv is not None:
                srv.close()
                await srv.wait_closed()
                self.servers[port] = None
            else:
                try:
                    self.servers[port] = await asyncio.start_server(self._conn, "127.0.0.1", port)
                except OSError:
                    pass
            await asyncio.sleep(0.2)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def write_config(path, ports, checks, hook_port, generation):
    lines = [
        f"# generation {generation}",
        "engine:",
        "  state_dir: state",
        "  status_log_interval: 1h",
        "  watch: false",
        "  max_concurrent_checks: 2048",
        "http: { listen: 127.0.0.1:0 }",
        "alerting:",
        "  group_wait: 1s",
        "  flapping: { changes: 0 }",
        "channels:",
        f"  hook: {{ type: webhook, url: 'http://127.0.0.1:{hook_port}/hook' }}",
        "checks:",
    ]
    for i in range(checks):
        port = ports[i % len(ports)]
        lines += [
            f"  - name: c{i}",
            "    type: tcp",
            "    host: 127.0.0.1",
            f"    port: {port}",
            "    interval: 10s",
            "    timeout: 2s",
            "    threshold: 2",
        ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("vigia")
    ap.add_argument("--checks", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    a = ap.parse_args()

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    targets = Targets()
    await targets.start()
    work = tempfile.mkdtemp(prefix="vigia-soak-")
    config = os.path.join(work, "config.yaml")
    generation = 0
    write_config(config, targets.ports, a.checks, hook.server_address[1], generation)
    log = open(os.path.join(work, "vigia.log"), "w")
    engine = subprocess.Popen([a.vigia, "run", "-c", config, "--log-format", "json", "--no-console"],
                              stdout=log, stderr=subprocess.STDOUT)
    stop = asyncio.Event()
    flapper = asyncio.create_task(targets.flap(stop))
    start = time.time()
    samples = []
    next_reload = start + 60
    next_storm = start + 300
    end = start + a.minutes * 60
    try:
        while time.time() < end:
            await asyncio.sleep(10)
            if engine.poll() is not None:
                print(f"soak: the engine exited with {engine.returncode}", file=sys.stderr)
                return 1
            t = time.time() - start
            samples.append((t, rss_kb(engine.pid), fds(engine.pid)))
            print(f"{t/60:5.1f} min  RSS {samples[-1][1]/1024:7.1f} MiB  fds {samples[-1][2]}", flush=True)
            if time.time() >= next_reload:
                generation += 1
                write_config(config, targets.ports, a.checks, hook.server_address[1], generation)
                engine.send_signal(signal.SIGHUP)
                next_reload += 60
            if time.time() >= next_storm:
                for _ in range(50):
                    engine.send_signal(signal.SIGHUP)
                    await asyncio.sleep(0.02)
                next_storm += 300
    finally:
        stop.set()
        await flapper
        # Every target up again, then wait for quiet: the last transitions come up to
        # threshold x interval after the flapping stops, and their alerts group_wait
        # later. Stopped earlier, the engine keeps them in its outbox for its next
        # start, and this count would call them missing.
        await targets.reopen()
        log_path = os.path.join(work, "vigia.log")
        size, quiet_since, give_up = -1, time.time(), time.time() + 120
        while time.time() < give_up:
            now_size = os.path.getsize(log_path)
            if now_size != size:
                size, quiet_since = now_size, time.time()
            elif time.time() - quiet_since >= 15:
                break
            await asyncio.sleep(1)
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=60)
        log.close()

    logged = Counter()
    with open(os.path.join(work, "vigia.log")) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "alert" and e.get("state") in ("failed", "recovered"):
                logged[(e.get("check"), e.get("state"))] += 1
    delivered = Counter()
    duplicates = 0
    with Receiver.lock:
        for (check, state, at), n in Receiver.delivered.items():
            delivered[(check, state)] += n
            duplicates += n - 1
    missing = sum(max(0, n - delivered[k]) for k, n in logged.items())
    extra = sum(max(0, n - logged[k]) for k, n in delivered.items())
    warm = [s for s in samples if s[0] >= a.warmup * 60]
    if warm:
        growth = (warm[-1][1] - warm[0][1]) / warm[0][1] * 100
        print(f"RSS after warm-up {warm[0][1]/1024:.1f} MiB -> {warm[-1][1]/1024:.1f} MiB ({growth:+.1f} %)")
        print(f"descriptors {warm[0][2]} -> {warm[-1][2]}")
    print(f"transitions logged {sum(logged.values())}, delivered {sum(delivered.values())}, "
          f"missing {missing}, extra {extra}, duplicates {duplicates}")
    ok = missing == 0 and extra == 0 and duplicates == 0
    if warm:
        ok = ok and growth < 5 and warm[-1][2] <= warm[0][2] + 5
    print("soak: OK" if ok else "soak: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
