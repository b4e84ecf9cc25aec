#!/usr/bin/env python3
"""relay bridge benchmarks (issue 15), every figure beside its baseline from
the same run.

Run from the repository root:  python3 bench/bridge.py [--quick]
Needs nats-server (Debian's package) and a Rust toolchain. Builds relay and
the baseline (bench/bridge_publish.rs: a bare async-nats JetStream publish
loop) in release mode, starts one nats-server with JetStream on a free
loopback port and a temp store, and measures:

- A -> B sustained throughput: messages sent on home A (`send --batch`)
  until all are in B's new/, against the bare publish loop on the same
  server (aim: >= 0.3x);
- A-send -> B-new/ latency, p50 and p99 over single sends into a proxy
  that has been there a while (aim: p50 <= 20 ms);
- the first send into a proxy made while the bridge idles: a fresh
  endpoint added on B each trial, sent to on A as soon as A lists it
  (what waited for the publisher's fallback look before ecfcde4);
- the bridge's RSS with 10,000 messages queued (server down), and while
  they drain;
- `relay send` per process and the binary size with and without the bridge
  (async-nats), when RELAY_BEFORE names a relay binary built without it;
- with RELAY_BRIDGE_BEFORE naming an earlier relay binary, the throughput
  and latency of its bridge too, interleaved round by round with this
  build's (the before/after of a bridge change in one invocation);
- the local floor: `send --batch` of the same messages into an endpoint of
  the same home (no bridge), the rate the sending side alone allows;
- the CPU both bridges and the server spend per message in a throughput
  round (steadier than the rate on a shared machine);
- B's CPU while idle after a throughput round (its messages delivered and
  unread: what the report loop spends on them).

Set TMPDIR to put the homes and the server's store elsewhere (every file
the bridge creates or removes is an inode; on a file system whose inode
allocation is slow that, not the bridge, sets the pace).

The machine has 2 cores shared with other work: figures are noisy, the
ratios (same run, interleaved) are what to read. Writes bench/bridge.json.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
SCRATCH = tempfile.mkdtemp(prefix="relay-bridge-bench-")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
RELAY = os.path.join(TARGET, "release", "relay")
BASELINE = os.path.join(TARGET, "release", "examples", "bridge_publish")
BEFORE = os.environ.get("RELAY_BRIDGE_BEFORE")
BUILDS = {"after": RELAY, **({"before": BEFORE} if BEFORE else {})}
NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
OPEN = {"reliability": {"rateLimit": {"enabled": False},
                        "backpressure": {"maxMailboxSize": 1000000}}}
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nats(port, store):
    p = subprocess.Popen([NATS, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(p)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.02)
    sys.exit("nats-server did not start")


def home(name, endpoints=()):
    h = os.path.join(SCRATCH, name)
    os.makedirs(h)
    with open(os.path.join(h, "config.json"), "w") as f:
        json.dump(OPEN, f)
    if endpoints:
        relay(h, "endpoints", "add", *endpoints)
    return h


def relay(h, *args, stdin=None, binary=RELAY):
    return subprocess.run([binary, *args], env=dict(ENV, RELAY_HOME=h), input=stdin,
                          capture_output=True, check=True)


def bridge(h, url, host, binary=RELAY):
    p = subprocess.Popen([binary, "bridge", "--nats", url, "--host", host],
                         env=dict(ENV, RELAY_HOME=h), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    PROCS.append(p)
    return p


def count(d):
    try:
        return len(os.listdir(d))
    except FileNotFoundError:
        return 0


def wait(pred, what, limit=120):
    deadline = time.time() + limit
    while not pred():
        if time.time() > deadline:
            sys.exit(f"timed out: {what}")
        time.sleep(0.002)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch(n, start=0, ep="agent.b"):
    return "".join(json.dumps({"subject": ep, "payload": {"i": i, "pad": "x" * 300}}) + "\n"
                   for i in range(start, start + n)).encode()


def main():
    subprocess.run(["cargo", "build", "--release", "--bin", "relay", "--example", "bridge_publish"],
                   cwd=ROOT, check=True)
    n = 2000 if QUICK else 10000
    rounds = 2 if QUICK else 3
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    nats = start_nats(port, os.path.join(SCRATCH, "js"))
    results = {}

    # Throughput, interleaved with the baseline (and the before build)
    # round by round.
    bridged = {k: [] for k in BUILDS}
    idle_cpu = {k: [] for k in BUILDS}
    cpu = {k: [] for k in BUILDS}
    bare, local = [], []
    for r in range(rounds):
        for k, binary in BUILDS.items():
            # Endpoint names of their own: the directory keeps every host seen.
            ep = f"agent.tp{k}{r}"
            a, b = home(f"a{k}{r}"), home(f"b{k}{r}", [ep])
            ba, bb = bridge(a, url, f"tpa{k}{r}", binary), bridge(b, url, f"tpb{k}{r}", binary)
            wait(lambda: os.path.isdir(os.path.join(a, "mailboxes", ep, "new")), "directory")
            new_b = os.path.join(b, "mailboxes", ep, "new")
            c0 = cpu_s(ba.pid) + cpu_s(bb.pid) + cpu_s(nats.pid)
            t0 = time.time()
            relay(a, "send", "--batch", "--from", "agent.a", stdin=batch(n, ep=ep), binary=binary)
            wait(lambda: count(new_b) >= n, f"all {n} on B ({k} build, round {r})")
            bridged[k].append(n / (time.time() - t0))
            # Both bridges' and the server's CPU per message: less noisy
            # than the rate on a shared machine.
            cpu[k].append((cpu_s(ba.pid) + cpu_s(bb.pid) + cpu_s(nats.pid) - c0) / n * 1e6)
            # B's CPU while idle, with the n messages delivered and unread.
            time.sleep(1)
            c0 = cpu_s(bb.pid)
            time.sleep(3)
            idle_cpu[k].append((cpu_s(bb.pid) - c0) / 3 * 100)
            ba.terminate(); bb.terminate(); ba.wait(); bb.wait()
        out = subprocess.run([BASELINE, url, str(n), "420"], capture_output=True, check=True)
        res = json.loads(out.stdout)
        bare.append(res["messages"] / res["seconds"])
        h = home(f"local{r}", ["agent.local"])
        t0 = time.time()
        relay(h, "send", "--batch", "--from", "agent.a", stdin=batch(n, ep="agent.local"))
        local.append(n / (time.time() - t0))
    results["throughput"] = {
        "bridged_msgs_per_s": statistics.median(bridged["after"]),
        "bare_publish_msgs_per_s": statistics.median(bare),
        "ratio": statistics.median(bridged["after"]) / statistics.median(bare),
        "local_send_batch_msgs_per_s": statistics.median(local),
        # What the bridge keeps of the rate at which this home alone can
        # write the same messages durably (no bridge can beat 1.0 here:
        # both ends write every message as a file).
        "ratio_to_local_floor": statistics.median(bridged["after"]) / statistics.median(local),
        "b_idle_cpu_pct": statistics.median(idle_cpu["after"]),
        "cpu_us_per_msg": statistics.median(cpu["after"]),
        "messages": n, "rounds": rounds,
    }
    if BEFORE:
        results["throughput"]["before_bridged_msgs_per_s"] = statistics.median(bridged["before"])
        results["throughput"]["before_ratio"] = (statistics.median(bridged["before"])
                                                 / statistics.median(bare))
        results["throughput"]["before_b_idle_cpu_pct"] = statistics.median(idle_cpu["before"])
        results["throughput"]["before_cpu_us_per_msg"] = statistics.median(cpu["before"])

    # Latency: single sends, one at a time, the builds taking turns.
    lat = {k: [] for k in BUILDS}
    setups = {}
    for k, binary in BUILDS.items():
        ep = f"agent.lat{k}"
        a, b = home(f"la{k}"), home(f"lb{k}", [ep])
        ba, bb = bridge(a, url, f"lata{k}", binary), bridge(b, url, f"latb{k}", binary)
        wait(lambda: os.path.isdir(os.path.join(a, "mailboxes", ep, "new")), "directory")
        setups[k] = (a, ep, os.path.join(b, "mailboxes", ep, "new"), binary, ba, bb)
    # One warm-up send each, not counted: the first send into a new proxy
    # is measured on its own below.
    for k, (a, ep, new_b, binary, _, _) in setups.items():
        relay(a, "send", ep, "{}", binary=binary)
        wait(lambda: count(new_b) > 0, "warm-up copy")
    samples = 50 if QUICK else 200
    for i in range(samples):
        for k, (a, ep, new_b, binary, _, _) in setups.items():
            t0 = time.time()
            relay(a, "send", ep, "{}", binary=binary)
            wait(lambda: count(new_b) > i + 1, "latency copy")
            lat[k].append((time.time() - t0) * 1000)
            time.sleep(0.01)
    for k in BUILDS:
        v = sorted(lat[k])
        name = "latency_ms" if k == "after" else "before_latency_ms"
        results[name] = {"p50": v[len(v) // 2], "p99": v[min(len(v) - 1, int(len(v) * 0.99))],
                         "samples": len(v)}
    # The first send into a proxy made while the bridge idles.
    first = {k: [] for k in BUILDS}
    for i in range(6 if QUICK else 20):
        for k, (a, _, new_b, binary, _, _) in setups.items():
            ep = f"agent.first{k}{i}"
            b = os.path.dirname(os.path.dirname(os.path.dirname(new_b)))
            relay(b, "endpoints", "add", ep, binary=binary)
            remotes = os.path.join(a, "bridge", "remotes.json")

            def listed():
                try:
                    with open(remotes) as f:
                        return ep in json.load(f)
                except (OSError, ValueError):
                    return False
            wait(listed, f"{ep} listed on A")
            t0 = time.time()
            relay(a, "send", ep, "{}", binary=binary)
            wait(lambda: count(os.path.join(b, "mailboxes", ep, "new")) > 0, "first copy")
            first[k].append((time.time() - t0) * 1000)
    for k in BUILDS:
        name = "first_send_ms" if k == "after" else "before_first_send_ms"
        results[name] = {"median": statistics.median(first[k]), "max": max(first[k]),
                         "over_100_ms": sum(v > 100 for v in first[k]), "trials": len(first[k])}
    for (_, _, _, _, ba, bb) in setups.values():
        ba.terminate(); bb.terminate(); ba.wait(); bb.wait()

    # RSS with 10,000 queued (the server down), then while they drain.
    a, b = home("ra"), home("rb", ["agent.rss"])
    ba, bb = bridge(a, url, "rssa"), bridge(b, url, "rssb")
    wait(lambda: os.path.isdir(os.path.join(a, "mailboxes", "agent.rss", "new")), "directory")
    idle = rss_kb(ba.pid)
    nats.kill(); nats.wait()
    relay(a, "send", "--batch", "--from", "agent.a", stdin=batch(10000, ep="agent.rss"))
    time.sleep(3)
    queued = rss_kb(ba.pid)
    nats = start_nats(port, os.path.join(SCRATCH, "js"))
    peak = queued
    new_b = os.path.join(b, "mailboxes", "agent.rss", "new")
    deadline = time.time() + 300
    while count(new_b) < 10000 and time.time() < deadline:
        peak = max(peak, rss_kb(ba.pid))
        time.sleep(0.05)
    results["bridge_rss_kb"] = {"idle": idle, "10000_queued": queued, "peak_draining": peak,
                                "drained": count(new_b)}
    ba.terminate(); bb.terminate(); ba.wait(); bb.wait()

    # relay send per process and binary size, before/after async-nats.
    before = os.environ.get("RELAY_BEFORE")
    results["binary_bytes"] = {"with_bridge": os.path.getsize(RELAY)}
    if before:
        results["binary_bytes"]["without_bridge"] = os.path.getsize(before)
        times = {"with_bridge": [], "without_bridge": []}
        homes = {k: home(f"send-{k}", ["q"]) for k in times}
        bins = {"with_bridge": RELAY, "without_bridge": before}
        for _ in range(5 if QUICK else 15):
            for k in times:
                env = dict(ENV, RELAY_HOME=homes[k])
                t0 = time.time()
                for _ in range(20):
                    subprocess.run([bins[k], "send", "q", "{}"], env=env, check=True,
                                   stdout=subprocess.DEVNULL)
                times[k].append((time.time() - t0) / 20 * 1000)
        w, wo = statistics.median(times["with_bridge"]), statistics.median(times["without_bridge"])
        results["send_ms_per_process"] = {"with_bridge": w, "without_bridge": wo, "ratio": w / wo}

    nats.kill()
    print(json.dumps(results, indent=2))
    with open(os.path.join(ROOT, "bench", "bridge.json"), "w") as f:
        json.dump(results, f, indent=2)


try:
    main()
finally:
    for p in PROCS:
        if p.poll() is None:
            p.kill()
    shutil.rmtree(SCRATCH, ignore_errors=True)
