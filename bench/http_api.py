#!/usr/bin/env python3
"""relay serve benchmarks: figures beside baselines measured in the same run.

Run from the repository root:
    python3 bench/http_api.py [--quick] [--relay PATH] [--baseline PATH]
                              [--only publish|status|sse]

Builds relay (release, statically linked as bench/bench.py builds the
shipped binary) unless --relay names one, then measures (all three unless
--only names one):

  1. POST /api/relay/messages over keep-alive connections from 4 client
     threads, against `relay send` one process per message (4 processes at
     a time, and one at a time), every message durable (fsynced) in both;
     the ratio is the bar (>= 2x the 4-process rate). Every message is
     counted in new/ afterwards.
  2. GET /api/relay/status latency (p50, p99) with 100k index rows over
     200 endpoints (rows inserted directly, as after a day of traffic);
     with --baseline (another relay binary, e.g. an older build), its
     server on a home of its own is asked in turns with this one's, and
     the figures are quoted side by side.
  3. RSS of `relay serve` idle, and with 500 SSE clients connected.

Writes bench/http_api.json. The machine is shared: quote ratios, not absolutes.
"""

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
SCRATCH = tempfile.mkdtemp(prefix="relay-http-bench-", dir=os.environ.get("RELAY_BENCH_DIR"))
ENV_BASE = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
RESULTS = []
COUNTER = [0]


def arg(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def record(name, value, unit, baseline=None, baseline_value=None, bar=None, note=""):
    ratio = (value / baseline_value) if baseline_value else None
    RESULTS.append({"name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
                    "baselineValue": None if baseline_value is None else round(baseline_value, 3),
                    "ratio": None if ratio is None else round(ratio, 3), "bar": bar, "note": note})
    shown = f"{value:10.3f} {unit:<8}"
    if baseline:
        shown += f"  vs {baseline} {baseline_value:.3f}  ratio {ratio:.2f}"
    if bar:
        shown += f"  (bar {bar})"
    print(f"{name:<52}{shown}", flush=True)


def build():
    given = arg("--relay")
    if given:
        return given
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "rustc", "--release", "--quiet", "--bin", "relay", "--",
                    "-C", "target-feature=+crt-static", "-C", "relocation-model=static"], cwd=ROOT, check=True)
    path = os.path.join(SCRATCH, "relay")
    shutil.copy2(os.path.join(target, "release", "relay"), path)
    return path


def home(relay, config, endpoints):
    COUNTER[0] += 1
    h = os.path.join(SCRATCH, f"home-{COUNTER[0]}")
    os.makedirs(h)
    with open(os.path.join(h, "config.json"), "w") as f:
        json.dump(config, f)
    env = dict(ENV_BASE, RELAY_HOME=h)
    subprocess.run([relay, "endpoints", "add", *endpoints], env=env, check=True)
    return h, env


class Server:
    def __init__(self, relay, env):
        self.proc = subprocess.Popen([relay, "serve", "--listen", "127.0.0.1:0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        url = self.proc.stdout.readline().strip()
        hostport = url.removeprefix("http://").rstrip("/")
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def count_new(h, ep="q"):
    return len(os.listdir(os.path.join(h, "mailboxes", ep, "new")))


def post_rate(relay, n, clients):
    """Messages per second of POST /api/relay/messages from `clients`
    keep-alive connections."""
    h, env = home(relay, {"reliability": {"rateLimit": {"enabled": False},
                                          "backpressure": {"maxMailboxSize": 10 * n}}}, ["q"])
    srv = Server(relay, env)
    body = json.dumps({"subject": "q", "from": "bench", "payload": {"text": "x" * 200}})
    per = n // clients
    errors = []

    def worker():
        c = srv.conn()
        try:
            for _ in range(per):
                c.request("POST", "/api/relay/messages", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                if r.status != 200 or json.loads(data)["deliveredTo"] != 1:
                    errors.append(data)
                    return
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    os.sync()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    srv.stop()
    if errors:
        sys.exit(f"bench: a POST failed: {errors[0]!r}")
    if count_new(h) != per * clients:
        sys.exit(f"bench: {count_new(h)} messages in new/, expected {per * clients}")
    return per * clients / took


def send_rate(relay, n, parallel):
    """Messages per second of `relay send`, one process per message,
    `parallel` processes at a time."""
    h, env = home(relay, {"reliability": {"rateLimit": {"enabled": False},
                                          "backpressure": {"maxMailboxSize": 10 * n}}}, ["q"])
    payload = json.dumps({"text": "x" * 200})
    per = n // parallel

    def worker():
        for _ in range(per):
            subprocess.run([relay, "send", "q", payload, "--from", "bench"], env=env,
                           stdout=subprocess.DEVNULL, check=True)

    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    os.sync()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    if count_new(h) != per * parallel:
        sys.exit(f"bench: {count_new(h)} messages in new/, expected {per * parallel}")
    return per * parallel / took


def publish(relay, rounds, n):
    http_rates, send4, send1 = [], [], []
    for _ in range(rounds):
        http_rates.append(post_rate(relay, n, 4))
        send4.append(send_rate(relay, n, 4))
        send1.append(send_rate(relay, n // 2, 1))
    record("relay send, 1 process at a time (durable)", statistics.median(send1), "msg/s")
    record("relay send, 4 processes at a time (durable)", statistics.median(send4), "msg/s",
           "1 at a time", statistics.median(send1))
    record("POST /api/relay/messages, 4 keep-alive clients", statistics.median(http_rates), "msg/s",
           "relay send x4 processes", statistics.median(send4), ">= 2x")


def status_home(relay):
    """A home of 200 endpoints and 100k index rows (inserted directly, as
    after a day of traffic), its index made by `relay` itself."""
    eps = [f"agent.e{i}" for i in range(200)]
    h, env = home(relay, {}, eps)
    subprocess.run([relay, "status", "--json"], env=env, stdout=subprocess.DEVNULL, check=True)
    db = os.path.join(h, "relay.db")
    subprocess.run(["sqlite3", db, """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
        INSERT INTO messages (endpoint, id, subject, sender, trace_id, status, sent_at, claimed_at, done_at)
        SELECT 'agent.e' || (i % 200), printf('%026d', i), 'agent.e' || (i % 200), 'bench', printf('%026d', i),
               'acked', 1700000000000 + i, 1700000000010 + i, 1700000000020 + i FROM n;"""], check=True)
    return env


def status_latency(relay, requests, baseline):
    """p50 and p99 of GET /api/relay/status; with a baseline binary, both
    servers are asked in turns of 50 requests, so both see the same load.
    Each turn has a connection of its own (the server closes one idle for
    10 s), opened by one request that is not timed."""
    runs = [("", relay)] + ([(" (baseline)", baseline)] if baseline else [])
    servers = []
    for label, binary in runs:
        env = status_home(binary)
        srv = Server(binary, env)
        c = srv.conn()
        for _ in range(10):  # the first requests open the pooled contexts
            c.request("GET", "/api/relay/status")
            c.getresponse().read()
        c.close()
        servers.append((label, binary, env, srv, []))
    for _ in range(0, requests, 50):
        for _, _, _, srv, times in servers:
            c = srv.conn()
            c.request("GET", "/api/relay/status")
            c.getresponse().read()
            for _ in range(50):
                start = time.perf_counter()
                c.request("GET", "/api/relay/status")
                r = c.getresponse()
                r.read()
                times.append((time.perf_counter() - start) * 1000)
                if r.status != 200:
                    sys.exit(f"bench: status answered {r.status}")
            c.close()
    figures = {}
    for label, _, _, srv, times in servers:
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        figures[label] = (statistics.median(times), p99)
    # The same snapshot by a process of its own, for scale.
    for label, binary, env, srv, _ in servers:
        per = []
        for _ in range(15):
            start = time.perf_counter()
            subprocess.run([binary, "status", "--json"], env=env, stdout=subprocess.DEVNULL,
                           check=True)
            per.append((time.perf_counter() - start) * 1000)
        figures[label] += (statistics.median(per),)
        srv.stop()
    base = figures.get(" (baseline)")
    for label, (p50, p99, per) in figures.items():
        versus = {} if label or not base else {"baseline": "baseline binary"}
        record(f"GET /api/relay/status p50, 100k rows, 200 endpoints{label}", p50, "ms",
               baseline_value=base[0] if versus else None, **versus)
        record(f"GET /api/relay/status p99, 100k rows, 200 endpoints{label}", p99, "ms",
               baseline_value=base[1] if versus else None, bar=None if label else "< 20 ms",
               **versus)
        record(f"relay status --json (a process each), same home{label}", per, "ms",
               baseline_value=base[2] if versus else None, **versus)


def sse_memory(relay, clients):
    _, env = home(relay, {}, ["agent.b"])
    srv = Server(relay, env)
    time.sleep(0.5)
    idle = srv.rss_kb()
    socks = []
    for _ in range(clients):
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(f"GET /api/relay/stream?subject=agent.b HTTP/1.1\r\nHost: {srv.host}\r\n"
                  "Accept: text/event-stream\r\n\r\n".encode())
        socks.append(s)
    for s in socks:
        got = b""
        while b"relay_connected" not in got:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit(f"bench: a stream closed: {got!r}")
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            sys.exit(f"bench: a stream was refused: {got[:200]!r}")
    time.sleep(0.5)
    busy = srv.rss_kb()
    for s in socks:
        s.close()
    srv.stop()
    record("RSS of relay serve, idle", idle / 1024, "MB")
    record(f"RSS of relay serve, {clients} SSE clients", busy / 1024, "MB", "idle", idle / 1024)
    record(f"  per SSE client", (busy - idle) / clients, "KB")


def main():
    relay = build()
    print(f"relay serve benchmarks ({'quick' if QUICK else 'full'}), {relay}\n")
    try:
        only = arg("--only")
        if only in (None, "publish"):
            publish(relay, 1 if QUICK else 3, 400 if QUICK else 2000)
        if only in (None, "status"):
            status_latency(relay, 200 if QUICK else 1000, arg("--baseline"))
        if only in (None, "sse"):
            sse_memory(relay, 500)
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    out = os.path.join(ROOT, "bench", "http_api.json")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for r in RESULTS:
        r["when"] = when
    results = RESULTS
    if arg("--only") and os.path.exists(out):
        # One part measured again: the other parts' figures are kept (each
        # result says when it was measured).
        with open(out) as f:
            kept = json.load(f).get("results", [])
        fresh = {r["name"]: r for r in RESULTS}
        results = [fresh.pop(r["name"], r) for r in kept] + list(fresh.values())
    with open(out, "w") as f:
        json.dump({"quick": QUICK, "when": when, "results": results}, f, indent=2)
        f.write("\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
