#!/usr/bin/env python3
"""Per-process `relay send` beside DorkOS's index: what coexistence costs.

Run from the repository root:
    python3 bench/dorkos.py [--quick] [--before PATH] [--relay PATH]

Measures, interleaved round by round (medians, ratios in the same run):
  - the C floor (bench/cfloor.c: bare durable Maildir delivery);
  - relay send with no DorkOS index (the one cheap check: two stats);
  - relay send with a DorkOS server's dork.db beside the home (rows and a
    span written per send);
  - with --before PATH, the same send by an earlier relay binary (e.g.
    main's), with no DorkOS index: the cost of the check itself.
Without --relay it builds relay as demo.sh ships it (static, release).
Writes bench/dorkos-results.json.
"""

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
SCRATCH = tempfile.mkdtemp(prefix="relay-dorkos-bench-", dir=os.environ.get("RELAY_BENCH_DIR"))
ENV_BASE = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}

# DorkOS's tables relay writes (dorkos-http.md 7.3).
DDL = """
PRAGMA journal_mode = WAL;
CREATE TABLE __drizzle_migrations (id INTEGER PRIMARY KEY, hash text NOT NULL, created_at numeric);
INSERT INTO __drizzle_migrations (hash, created_at) VALUES ('0072', 1787383865514);
CREATE TABLE relay_index (id TEXT NOT NULL, subject TEXT NOT NULL, endpoint_hash TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending', expires_at TEXT, sender TEXT, payload TEXT, metadata TEXT,
  created_at TEXT NOT NULL, PRIMARY KEY (id, endpoint_hash));
CREATE INDEX idx_relay_index_sender_created_at ON relay_index (sender, created_at DESC);
CREATE TABLE relay_traces (id TEXT PRIMARY KEY NOT NULL, message_id TEXT NOT NULL UNIQUE,
  trace_id TEXT NOT NULL, subject TEXT NOT NULL, status TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'delivery',
  sent_at TEXT NOT NULL, delivered_at TEXT, processed_at TEXT, error_message TEXT, metadata TEXT);
"""


def arg(name):
    if name in sys.argv:
        i = sys.argv.index(name)
        return sys.argv[i + 1] if i + 1 < len(sys.argv) else None
    return None


def home(relay, dorkos):
    """A fresh <parent>/relay home (DorkOS's layout); with dorkos, dork.db beside it."""
    parent = tempfile.mkdtemp(dir=SCRATCH)
    h = os.path.join(parent, "relay")
    env = dict(ENV_BASE, RELAY_HOME=h)
    config = {"reliability": {"rateLimit": {"maxPerWindow": 1000000},
                              "backpressure": {"maxMailboxSize": 1000000}}}
    os.makedirs(h)
    with open(os.path.join(h, "config.json"), "w") as f:
        json.dump(config, f)
    subprocess.run([relay, "endpoints", "add", "q"], env=env, check=True)
    if dorkos:
        db = sqlite3.connect(os.path.join(parent, "dork.db"))
        db.executescript(DDL)
        db.close()
    return env


def timed(cmd, env=None):
    os.sync()
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def main():
    relay = arg("--relay")
    if relay is None:
        subprocess.run(["cargo", "rustc", "--release", "--quiet", "--bin", "relay", "--",
                        "-C", "target-feature=+crt-static", "-C", "relocation-model=static"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        relay = os.path.join(SCRATCH, "relay")
        shutil.copy2(os.path.join(target, "release", "relay"), relay)
    before = arg("--before")
    cfloor = os.path.join(SCRATCH, "cfloor")
    subprocess.run(["gcc", "-O2", "-o", cfloor, os.path.join(ROOT, "bench", "cfloor.c")], check=True)
    md = os.path.join(SCRATCH, "md")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(md, sub))
    rounds = 40 if QUICK else 200
    payload = '{"text":"' + "x" * 200 + '"}'
    cases = {"no index": home(relay, False), "dork.db": home(relay, True)}
    if before:
        cases["before, no index"] = home(before, False)
    times = {k: [] for k in ["C floor", *cases]}
    try:
        for _ in range(rounds):
            times["C floor"].append(timed([cfloor, md, "1"]))
            for name, env in cases.items():
                binary = before if name.startswith("before") else relay
                times[name].append(timed([binary, "send", "q", payload, "--from", "bench"], env=env))
        floor = statistics.median(times["C floor"])
        results = []
        print(f"relay send beside DorkOS ({rounds} rounds, medians)\n")
        for name, xs in times.items():
            m = statistics.median(xs)
            line = {"name": name, "medianMs": round(m, 3), "vsFloor": round(m / floor, 3)}
            if before and name != "C floor":
                b = statistics.median(times["before, no index"])
                line["vsBefore"] = round(m / b, 3)
            results.append(line)
            extra = f"  vs before {line['vsBefore']:.2f}" if "vsBefore" in line else ""
            print(f"{name:<20} {m:8.3f} ms  vs C floor {m / floor:.2f}{extra}")
        # Every dork.db send left its rows and its span.
        env = cases["dork.db"]
        db = sqlite3.connect(os.path.join(os.path.dirname(env["RELAY_HOME"]), "dork.db"))
        n_rows = db.execute("select count(*) from relay_index").fetchone()[0]
        n_spans = db.execute("select count(*) from relay_traces").fetchone()[0]
        print(f"\ndork.db: {n_rows} rows, {n_spans} spans for {rounds} sends")
        out = os.path.join(ROOT, "bench", "dorkos-results.json")
        with open(out, "w") as f:
            json.dump({"quick": QUICK, "rounds": rounds,
                       "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "results": results, "dorkDbRows": n_rows, "dorkDbSpans": n_spans}, f, indent=2)
            f.write("\n")
        print(f"wrote {out}")
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
