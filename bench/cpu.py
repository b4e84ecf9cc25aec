#!/usr/bin/env python3
"""CPU time (user + sys of the child, getrusage) of relay's hot commands,
beside a baseline relay in the same rounds, alternating: less sensitive
than wall time to other work on the machine (run while others build).

    RELAY_BENCH_BIN=new/relay RELAY_BENCH_BASELINE=old/relay python3 bench/cpu.py [ROUNDS]

Per process: `send` (durable), `recv --ack`; per message: `recv -n 100
--ack`; per batch of 20,000: `send --batch` durable and `--no-fsync`, and
the next reader (`status --json`) ingesting the batch's journal rows.
Prints medians and ratios (new / baseline); writes nothing in the tree.
"""

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

BINS = {"new": os.environ["RELAY_BENCH_BIN"], "base": os.environ["RELAY_BENCH_BASELINE"]}
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
BATCH = 20000
SCRATCH = tempfile.mkdtemp(prefix="relay-cpu-", dir=os.environ.get("RELAY_BENCH_DIR"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
CONFIG = {"reliability": {"rateLimit": {"enabled": False}, "backpressure": {"maxMailboxSize": 1000000}}}
COUNT = [0]
RES = {}


def lines(n):
    return "".join(json.dumps({"subject": "q", "payload": {"n": i, "text": "x" * 200}}) + "\n"
                   for i in range(n)).encode()


def home(binary, fill=0):
    COUNT[0] += 1
    h = os.path.join(SCRATCH, f"home-{COUNT[0]}")
    os.makedirs(h)
    with open(os.path.join(h, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    env = dict(ENV, RELAY_HOME=h)
    subprocess.run([binary, "endpoints", "add", "q"], env=env, check=True, stdout=subprocess.DEVNULL)
    if fill:
        subprocess.run([binary, "send", "--batch", "--no-fsync"], env=env, input=lines(fill),
                       stdout=subprocess.DEVNULL, check=True)
        subprocess.run([binary, "status"], env=env, stdout=subprocess.DEVNULL, check=True)
    return env


def cpu(cmd, env, stdin=None):
    """CPU ms of one process (dirty data flushed first, outside it)."""
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, env=env, input=stdin, stdout=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000


def add(who, what, ms):
    RES.setdefault((what, who), []).append(ms)


def main():
    drain = ROUNDS // 10
    homes = {(who, kind): home(b, fill)
             for who, b in BINS.items()
             for kind, fill in (("send", 0), ("ack", ROUNDS), ("drain", 100 * drain))}
    batch = lines(BATCH)
    for i in range(ROUNDS):
        order = list(BINS.items()) if i % 2 == 0 else list(BINS.items())[::-1]
        for who, b in order:
            add(who, "send (per process)", cpu([b, "send", "q", '{"text":"' + "x" * 200 + '"}'],
                                                 homes[who, "send"]))
            add(who, "recv --ack (per process)", cpu([b, "recv", "q", "--ack"], homes[who, "ack"]))
            if i < drain:
                add(who, "recv -n 100 --ack (per message)",
                    cpu([b, "recv", "q", "-n", "100", "--ack"], homes[who, "drain"]) / 100)
            if i < 5:
                for mode, flags in (("durable", []), ("--no-fsync", ["--no-fsync"])):
                    env = home(b)
                    add(who, f"send --batch {mode} ({BATCH})", cpu([b, "send", "--batch", *flags], env, batch))
                    add(who, f"next reader after --batch {mode}", cpu([b, "status", "--json"], env))
    for what in dict.fromkeys(w for w, _ in RES):
        new, base = statistics.median(RES[what, "new"]), statistics.median(RES[what, "base"])
        print(f"{what:<40} {new:9.3f} ms CPU  vs baseline {base:9.3f}  ratio {new / base:.2f}"
              f"  (n={len(RES[what, 'new'])})", flush=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
