#!/usr/bin/env python3
"""Binary size, clean build time and per-process `send` time before and
after tokio + axum arrived (`relay serve` on axum).

Run from the repository root:

    python3 bench/http_build.py [--old REV] [--rounds N] [--skip-build]

Builds REV (default 69a4e36, the last main without axum) and HEAD, each in
its own git worktree with its own target dir under bench scratch space,
from clean, statically linked as bench/bench.py builds the shipped binary
(`cargo rustc --release --bin relay -- -C target-feature=+crt-static -C
relocation-model=static`).
Then it times `relay send` (durable, one process per message) of both
binaries interleaved round by round, beside the C floor (bench/cfloor.c),
and writes bench/http_build.json. Clean build times are wall-clock on
whatever else the machine is doing: compare them only within one run.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arg(name, default):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


OLD = arg("--old", "69a4e36")
ROUNDS = int(arg("--rounds", "100"))
WORK = os.environ.get("RELAY_BENCH_DIR") or tempfile.gettempdir()
SCRATCH = tempfile.mkdtemp(prefix="relay-http-build-", dir=WORK)
ENV_BASE = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "CARGO_TARGET_DIR"}


def build(rev, name):
    """A clean static release build of `rev`: (binary path, seconds)."""
    tree = os.path.join(SCRATCH, f"src-{name}")
    target = os.path.join(SCRATCH, f"target-{name}")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "--quiet", tree, rev], check=True)
    try:
        env = dict(ENV_BASE, CARGO_TARGET_DIR=target)
        # Dependencies are fetched before the clock starts: the figure is
        # compiling, not downloading.
        subprocess.run(["cargo", "fetch", "--locked", "--quiet"], cwd=tree, env=env, check=True)
        start = time.perf_counter()
        subprocess.run(["cargo", "rustc", "--release", "--locked", "--quiet", "--bin", "relay", "--",
                        "-C", "target-feature=+crt-static", "-C", "relocation-model=static"], cwd=tree, env=env, check=True)
        took = time.perf_counter() - start
        binary = os.path.join(SCRATCH, f"relay-{name}")
        shutil.copy2(os.path.join(target, "release", "relay"), binary)
        return binary, took
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=False)
        shutil.rmtree(target, ignore_errors=True)


def timed(cmd, env):
    os.sync()
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def home(binary):
    h = tempfile.mkdtemp(prefix="home-", dir=SCRATCH)
    with open(os.path.join(h, "config.json"), "w") as f:
        json.dump({"reliability": {"rateLimit": {"maxPerWindow": 1000000}}}, f)
    env = dict(ENV_BASE, RELAY_HOME=h)
    subprocess.run([binary, "endpoints", "add", "q"], env=env, check=True)
    return env


def main():
    results = {"old": OLD, "rounds": ROUNDS}
    bins = {}
    for name, rev in (("before", OLD), ("after", "HEAD")):
        binary, took = build(rev, name)
        bins[name] = binary
        results[name] = {"rev": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev],
                                               capture_output=True, text=True, check=True).stdout.strip(),
                         "cleanBuildSeconds": round(took, 1),
                         "binaryBytes": os.path.getsize(binary)}
        print(f"{name:<7} {results[name]['rev']}: clean static build {took:7.1f} s, "
              f"binary {os.path.getsize(binary) / 1e6:.2f} MB", flush=True)
    cfloor = os.path.join(SCRATCH, "cfloor")
    subprocess.run(["gcc", "-O2", "-o", cfloor, os.path.join(ROOT, "bench", "cfloor.c")], check=True)
    envs = {name: home(b) for name, b in bins.items()}
    md = os.path.join(SCRATCH, "cfloor-md")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(md, sub))
    payload = '{"text":"' + "x" * 200 + '"}'
    times = {"before": [], "after": [], "cfloor": []}
    for _ in range(ROUNDS):
        times["cfloor"].append(timed([cfloor, md, "1"], ENV_BASE))
        for name, b in bins.items():
            times[name].append(timed([b, "send", "q", payload, "--from", "bench"], envs[name]))
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in ("before", "after"):
        results[name]["sendMedianMs"] = round(med[name], 3)
        results[name]["sendVsCFloor"] = round(med[name] / med["cfloor"], 3)
    results["cfloorMedianMs"] = round(med["cfloor"], 3)
    results["sizeRatio"] = round(results["after"]["binaryBytes"] / results["before"]["binaryBytes"], 3)
    results["buildRatio"] = round(results["after"]["cleanBuildSeconds"] / results["before"]["cleanBuildSeconds"], 3)
    results["sendRatio"] = round(med["after"] / med["before"], 3)
    print(f"C floor durable deliver          {med['cfloor']:7.3f} ms")
    for name in ("before", "after"):
        print(f"relay send ({name:<6}) per process {med[name]:7.3f} ms  "
              f"({med[name] / med['cfloor']:.2f}x the C floor, bar <= 1.5x)")
    print(f"after/before: size {results['sizeRatio']:.2f}x, clean build {results['buildRatio']:.2f}x, "
          f"send {results['sendRatio']:.2f}x")
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(os.path.join(ROOT, "bench", "http_build.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
