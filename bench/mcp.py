#!/usr/bin/env python3
"""relay_send through `relay mcp` against per-process `relay send`, in one run.

    cargo build --release && python3 bench/mcp.py [-n 300] [--relay PATH]

Measures, on one fresh home, alternating so both see the same machine load:
  - `relay send SUBJECT PAYLOAD --from bench` as a new process per message
    (the baseline: what an agent shelling out pays), wall time per process;
  - `tools/call relay_send` to one long-running `relay mcp --as bench`, as raw
    JSON-RPC lines over its pipes (the server's cost, no client library);
  - the same through the real MCP client (the Python SDK of tests/mcp/.venv,
    if it is there: tests/mcp/venv.sh makes it), per call as the client sees it;
  - the server's resident memory (VmRSS) idle after the handshake, and after
    the calls.
Both paths fsync every message (relay's default durability). Prints medians
(p50) and p90 with the ratio, and writes bench/mcp-results.json. On a shared
machine, read the ratio: both sides are measured in the same minute.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def default_relay():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "relay")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class Raw:
    """`relay mcp` spoken to with JSON-RPC lines."""

    def __init__(self, relay, env):
        self.p = subprocess.Popen(
            [relay, "mcp", "--as", "bench"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        self.next_id = 1
        self.request("initialize", {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        })
        self.p.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        self.p.stdin.flush()

    def request(self, method, params):
        rid = self.next_id
        self.next_id += 1
        self.p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}) + "\n")
        self.p.stdin.flush()
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("relay mcp closed its stdout")
            msg = json.loads(line)
            if msg.get("id") == rid:
                return msg

    def send(self, subject, payload):
        msg = self.request("tools/call", {"name": "relay_send", "arguments": {"subject": subject, "payload": payload}})
        if msg.get("result", {}).get("isError") or "error" in msg:
            raise RuntimeError(f"relay_send failed: {msg}")

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(xs):
    return {"p50": statistics.median(xs), "p90": percentile(xs, 0.9), "n": len(xs)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=300, help="messages per method (default 300)")
    ap.add_argument("--relay", default=default_relay(), help="the relay binary (default: the release build)")
    ap.add_argument("--out", default=os.path.join(HERE, "mcp-results.json"))
    args = ap.parse_args()
    if not os.access(args.relay, os.X_OK):
        sys.exit(f"no relay binary at {args.relay}: cargo build --release first, or pass --relay")

    home = tempfile.mkdtemp(prefix="relay-mcp-bench-")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": home, "RELAY_HOME": os.path.join(home, "relay")}
    # A big mailbox and a generous rate limit: the benchmark measures sends, not refusals.
    os.makedirs(env["RELAY_HOME"], exist_ok=True)
    with open(os.path.join(env["RELAY_HOME"], "config.json"), "w") as f:
        json.dump({"reliability": {"rateLimit": {"enabled": False}, "backpressure": {"enabled": False}}}, f)
    subprocess.run([args.relay, "endpoints", "add", "bench.cli", "bench.mcp", "bench.sdk"], env=env, check=True)

    raw = Raw(args.relay, env)
    time.sleep(0.5)
    idle_rss = rss_kib(raw.p.pid)
    for _ in range(20):  # warm-up: pooled context, index open
        raw.send("bench.mcp", {"warm": True})
        subprocess.run([args.relay, "send", "bench.cli", "warm", "--from", "bench"], env=env,
                       check=True, stdout=subprocess.DEVNULL)

    cli_ms, mcp_ms = [], []
    payload = {"text": "benchmark message", "n": 0}
    for i in range(args.n):
        payload["n"] = i
        t0 = time.perf_counter()
        subprocess.run([args.relay, "send", "bench.cli", json.dumps(payload), "--from", "bench"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        cli_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        raw.send("bench.mcp", payload)
        mcp_ms.append((time.perf_counter() - t0) * 1000)
    busy_rss = rss_kib(raw.p.pid)
    raw.close()

    sdk = None
    py = os.path.join(ROOT, "tests", "mcp", ".venv", "bin", "python")
    if os.access(py, os.X_OK):
        c = subprocess.Popen([py, os.path.join(ROOT, "tests", "mcp", "client.py"), "stdio", args.relay, "mcp", "--as", "bench"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                             text=True, bufsize=1)
        json.loads(c.stdout.readline())  # initialize
        c.stdin.write(json.dumps({"op": "bench", "name": "relay_send", "n": 20, "args": {"subject": "bench.sdk", "payload": payload}}) + "\n")
        c.stdin.flush()
        json.loads(c.stdout.readline())
        c.stdin.write(json.dumps({"op": "bench", "name": "relay_send", "n": args.n, "args": {"subject": "bench.sdk", "payload": payload}}) + "\n")
        c.stdin.flush()
        got = json.loads(c.stdout.readline())
        c.stdin.write(json.dumps({"op": "close"}) + "\n")
        c.stdin.flush()
        c.wait(timeout=30)
        if "ms" in got:
            sdk = got["ms"]

    cli, mcp = summary(cli_ms), summary(mcp_ms)
    res = {
        "n": args.n,
        "relay": args.relay,
        "cli_send_ms": cli,
        "mcp_raw_send_ms": mcp,
        "mcp_sdk_send_ms": summary(sdk) if sdk else None,
        "ratio_cli_over_mcp_raw_p50": cli["p50"] / mcp["p50"],
        "ratio_cli_over_mcp_sdk_p50": (cli["p50"] / statistics.median(sdk)) if sdk else None,
        "idle_rss_kib": idle_rss,
        "rss_after_calls_kib": busy_rss,
        "loadavg": os.getloadavg(),
    }
    print(f"relay_send, {args.n} messages each, fsync per message (p50 / p90 ms):")
    print(f"  relay send (a process each)   {cli['p50']:7.2f} / {cli['p90']:7.2f}   baseline")
    print(f"  relay mcp, raw JSON-RPC       {mcp['p50']:7.2f} / {mcp['p90']:7.2f}   {res['ratio_cli_over_mcp_raw_p50']:.1f}x faster")
    if sdk:
        s = res["mcp_sdk_send_ms"]
        print(f"  relay mcp, Python MCP client  {s['p50']:7.2f} / {s['p90']:7.2f}   {res['ratio_cli_over_mcp_sdk_p50']:.1f}x faster")
    print(f"  relay mcp resident memory: {idle_rss} KiB idle, {busy_rss} KiB after the calls")
    print(f"  load average {res['loadavg'][0]:.2f} (2 cores; others' builds make figures noisy, the ratio less so)")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
