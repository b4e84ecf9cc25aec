#!/usr/bin/env python3
"""relay benchmarks: figures beside baselines measured in the same run.

Run from the repository root:  python3 bench/bench.py [--quick] [--only NAME,...]
(NAME: send, batch, recv_ack, consume, growth, status, index, memory;
CARGO_TARGET_DIR is honoured; RELAY_BENCH_BIN=path uses that relay instead
of building one; RELAY_BENCH_BASELINE=path also times that relay, e.g. the
commit before a change, in the same rounds: per-process send, --version and
the consumers, each beside the baseline's figure). Consumers against the
C claim floor:  python3 bench/bench.py --only consume
Builds relay (release) and bench/cfloor.c, then prints a table and writes
bench/results.json. Every figure is a median over repeated runs; each ratio
compares against a baseline measured in the same invocation, interleaved
round by round so machine noise hits both alike.

This disk (ext4 without a journal) creates files slowly for minutes after
many deletions in the same area. Every measurement therefore writes into
fresh directories under one scratch root and nothing is deleted until the
run ends, so no measurement pays for an earlier one's deletions; and
before each timed command it calls sync(2), so none pays for flushing the
data an earlier one left dirty.
"""

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
SCRATCH = tempfile.mkdtemp(prefix="relay-bench-", dir=os.environ.get("RELAY_BENCH_DIR"))
# The release binary as demo.sh builds it (statically linked on Linux), and
# the ordinary dynamic build for comparison; both copied out of target/.
RELAY = os.path.join(SCRATCH, "relay")
RELAY_DYNAMIC = os.path.join(SCRATCH, "relay-dynamic")
CFLOOR = os.path.join(SCRATCH, "cfloor")
BASELINE = os.path.join(SCRATCH, "baseline", "relay") if os.environ.get("RELAY_BENCH_BASELINE") else None
ENV_BASE = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
COUNTER = [0]


def fresh(name):
    COUNTER[0] += 1
    path = os.path.join(SCRATCH, f"{name}-{COUNTER[0]}")
    os.makedirs(path)
    return path


def maildir(name):
    path = fresh(name)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub))
    return path


def relay_home(config=None, endpoints=("q",)):
    home = fresh("home")
    if config is not None:
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump(config, f)
    env = dict(ENV_BASE, RELAY_HOME=home)
    subprocess.run([RELAY, "endpoints", "add", *endpoints], env=env, check=True)
    return home, env


def timed(cmd, env=None, stdin=None):
    """Wall time of one process, in ms. Dirty data an earlier measurement
    left is flushed first (sync), outside the timed region: the durable
    batch's syncfs would otherwise pay for writing it."""
    os.sync()
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdin=stdin, stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def median(xs):
    return statistics.median(xs) if xs else float("nan")


RESULTS = []


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
    print(f"{name:<44}{shown}", flush=True)


def per_process_send(rounds):
    """Whole-process durable send, all features on, one process per message."""
    home, env = relay_home({"reliability": {"rateLimit": {"maxPerWindow": 1000000}}})
    payload = '{"text":"' + "x" * 200 + '"}'
    md_floor, md_mdeliver = maildir("cfloor"), maildir("mdeliver")
    msg = os.path.join(SCRATCH, "msg.eml")
    with open(msg, "w") as f:
        f.write("From: bench\nSubject: bench\n\n" + "x" * 500 + "\n")
    have_mdeliver = shutil.which("mdeliver") is not None
    _, env_dynamic = relay_home({"reliability": {"rateLimit": {"maxPerWindow": 1000000}}})
    t_relay, t_floor, t_mdeliver, t_true, t_hello = [], [], [], [], []
    t_dynamic, t_dynamic_hello = [], []
    t_base, t_base_hello = [], []
    _, env_base = relay_home({"reliability": {"rateLimit": {"maxPerWindow": 1000000}}})
    for _ in range(rounds):
        t_true.append(timed(["/bin/true"]))
        t_hello.append(timed([RELAY, "--version"]))
        t_floor.append(timed([CFLOOR, md_floor, "1"]))
        if have_mdeliver:
            with open(msg) as m:
                t_mdeliver.append(timed(["mdeliver", md_mdeliver], stdin=m))
        t_relay.append(timed([RELAY, "send", "q", payload, "--from", "bench"], env=env))
        t_dynamic_hello.append(timed([RELAY_DYNAMIC, "--version"]))
        t_dynamic.append(timed([RELAY_DYNAMIC, "send", "q", payload, "--from", "bench"], env=env_dynamic))
        if BASELINE:
            t_base_hello.append(timed([BASELINE, "--version"]))
            t_base.append(timed([BASELINE, "send", "q", payload, "--from", "bench"], env=env_base))
    record("spawn /bin/true (per process)", median(t_true), "ms")
    record("relay --version (startup only)", median(t_hello), "ms", "/bin/true", median(t_true))
    record("C floor durable deliver (per process)", median(t_floor), "ms")
    if have_mdeliver:
        record("mdeliver (per process)", median(t_mdeliver), "ms")
    record("relay send durable, all checks (per process)", median(t_relay), "ms", "C floor", median(t_floor), "<= 1.5x")
    if have_mdeliver:
        record("relay send vs mdeliver", median(t_relay), "ms", "mdeliver", median(t_mdeliver), "<= 1.5x")
    record("relay --version, dynamic build", median(t_dynamic_hello), "ms", "/bin/true", median(t_true))
    record("relay send, dynamic build (per process)", median(t_dynamic), "ms", "C floor", median(t_floor),
           note="cargo build --release; the shipped build is static")
    if BASELINE:
        record("baseline relay --version", median(t_base_hello), "ms", "/bin/true", median(t_true))
        record("relay --version vs the baseline's", median(t_hello), "ms", "baseline", median(t_base_hello))
        record("baseline relay send (per process)", median(t_base), "ms", "C floor", median(t_floor))
        record("relay send vs the baseline's", median(t_relay), "ms", "baseline", median(t_base))
    return home, env


def batch(n):
    config = {"reliability": {"rateLimit": {"enabled": False}, "backpressure": {"maxMailboxSize": 10 * n}}}
    lines = "".join(json.dumps({"subject": "q", "payload": {"n": i, "text": "x" * 200}}) + "\n" for i in range(n))
    path = os.path.join(SCRATCH, "batch.ndjson")
    with open(path, "w") as f:
        f.write(lines)
    rates = {"durable": [], "nofsync": [], "cloop": [], "cnofsync": [], "cgroup": [],
             "base_durable": [], "base_nofsync": []}
    ingest, retire, base_ingest = [], [], []
    runs = [("durable", RELAY, []), ("nofsync", RELAY, ["--no-fsync"])]
    if BASELINE:
        # The baseline relay's batches in the same rounds, and its next
        # reader (ingesting the same rows from its own journal).
        runs += [("base_durable", BASELINE, []), ("base_nofsync", BASELINE, ["--no-fsync"])]
    for _ in range(5 if BASELINE else 3):
        for mode, binary, flags in runs:
            _, env = relay_home(config)
            with open(path) as f:
                ms = timed([binary, "send", "--batch", *flags], env=env, stdin=f)
            rates[mode].append(n / ms * 1000)
            if mode == "base_durable":
                base_ingest.append(timed([binary, "status", "--json"], env=env))
            if mode == "durable":
                # The batch's index rows wait in the journal: the next
                # reader moves them into relay.db. Its cost, reported.
                ingest.append(timed([RELAY, "status", "--json"], env=env))
                # A minute later, the next reader retires the batch log
                # (one syncfs, then removes it): its cost, reported.
                later = dict(env, RELAY_FAKE_NOW_MS=str(int(time.time() * 1000) + 61_000))
                retire.append(timed([RELAY, "status", "--json"], env=later))
                if os.listdir(os.path.join(env["RELAY_HOME"], "batches")):
                    sys.exit("bench: the batch log was not retired")
        md = maildir("cloop")
        loop_n = max(200, n // 10)
        rates["cloop"].append(loop_n / timed([CFLOOR, md, str(loop_n)]) * 1000)
        md = maildir("cnofsync")
        rates["cnofsync"].append(n / timed([CFLOOR, md, str(n), "nofsync"]) * 1000)
        md = maildir("cgroup")
        rates["cgroup"].append(n / timed([CFLOOR, md, str(n), "group"]) * 1000)
    record(f"C per-message-fsync loop ({max(200, n // 10)} msgs)", median(rates["cloop"]), "msg/s")
    record(f"relay send --batch durable ({n} msgs)", median(rates["durable"]), "msg/s",
           "C fsync loop", median(rates["cloop"]), ">= 10x")
    record(f"C group commit by syncfs, one thread ({n} msgs)", median(rates["cgroup"]), "msg/s",
           "C fsync loop", median(rates["cloop"]),
           note="tmp/, one syncfs, renames, one fsync of new/: relay's batch before the batch log")
    record("relay send --batch durable vs the C syncfs group commit", median(rates["durable"]), "msg/s",
           "C group commit", median(rates["cgroup"]))
    record(f"next reader after the batch: status, ingesting {n} journal rows", median(ingest), "ms")
    record("a reader a minute later: status, retiring the batch log", median(retire), "ms")
    record(f"C no-fsync loop ({n} msgs)", median(rates["cnofsync"]), "msg/s")
    record(f"relay send --batch --no-fsync ({n} msgs)", median(rates["nofsync"]), "msg/s",
           "C no-fsync loop", median(rates["cnofsync"]), ">= 0.7x")
    if BASELINE:
        record("relay send --batch durable vs the baseline's", median(rates["durable"]), "msg/s",
               "baseline", median(rates["base_durable"]))
        record("relay send --batch --no-fsync vs the baseline's", median(rates["nofsync"]), "msg/s",
               "baseline", median(rates["base_nofsync"]))
        record("next reader after the batch vs the baseline's", median(ingest), "ms",
               "baseline", median(base_ingest))


def recv_ack(n):
    config = {"reliability": {"rateLimit": {"enabled": False}, "backpressure": {"maxMailboxSize": 10 * n}}}
    lines = "".join(json.dumps({"subject": "q", "payload": i}) + "\n" for i in range(n))
    _, env = relay_home(config)
    subprocess.run([RELAY, "send", "--batch"], env=env, input=lines.encode(), stdout=subprocess.DEVNULL, check=True)
    per = []
    for _ in range(min(100, n // 2)):
        start = time.perf_counter()
        out = subprocess.run([RELAY, "recv", "q", "--json"], env=env, capture_output=True, check=True).stdout
        msg_id = json.loads(out)["id"]
        subprocess.run([RELAY, "ack", "q", msg_id], env=env, check=True)
        per.append((time.perf_counter() - start) * 1000)
    record("recv + ack, one process each (per message)", median(per), "ms")
    start = time.perf_counter()
    out = subprocess.run([RELAY, "recv", "q", "--json", "-n", "1000000"], env=env, capture_output=True, check=True).stdout
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    for i in range(0, len(ids), 1000):
        subprocess.run([RELAY, "ack", "q", *ids[i:i + 1000]], env=env, check=True)
    took = time.perf_counter() - start
    record(f"recv -n + ack many ({len(ids)} msgs)", len(ids) / took, "msg/s")


def consume(rounds):
    """Whole-process consumers against the C claim floor (cfloor ... claim:
    list new/, rename the oldest into cur/, fsync cur/, read it, unlink it,
    fsync cur/ again), interleaved round by round: `recv --ack`, `recv`
    then `ack` as two processes (beside the same work in two C processes:
    cfloor ... take, then cfloor ... remove), and `recv -n 100 --ack` per
    message. Each consumer drains a mailbox of its own, filled beforehand
    (a batch without fsync, then sync), with rate limits off and a backlog
    as deep as the rounds. With RELAY_BENCH_BASELINE, that relay runs the
    same consumers in the same rounds."""
    config = {"reliability": {"rateLimit": {"enabled": False},
                              "backpressure": {"maxMailboxSize": 1000000}}}
    drain = 100
    batches = max(3, rounds // 10)
    md, md_two = maildir("cclaim"), maildir("ctwo")
    for m in (md, md_two):
        subprocess.run([CFLOOR, m, str(rounds), "nofsync"], check=True)
    bins = [("relay", RELAY)] + ([("baseline", BASELINE)] if BASELINE else [])
    homes = {}
    for who, binary in bins:
        for kind, n in (("ack", rounds), ("two", rounds), ("drain", drain * batches)):
            _, env = relay_home(config)
            lines = "".join(json.dumps({"subject": "q", "payload": {"n": i, "text": "x" * 200}}) + "\n"
                            for i in range(n))
            subprocess.run([binary, "send", "--batch", "--no-fsync"], env=env, input=lines.encode(),
                           stdout=subprocess.DEVNULL, check=True)
            subprocess.run([binary, "status"], env=env, stdout=subprocess.DEVNULL, check=True)
            homes[who, kind] = env
    os.sync()

    def two(first, second):
        """Wall ms of `first` (its output parsed outside the timing) then
        `second(output)`, each one process."""
        os.sync()
        start = time.perf_counter()
        out = subprocess.run(first[0], env=first[1], capture_output=True, check=True).stdout
        mid = time.perf_counter()
        cmd, env = second(out)
        resume = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
        return (mid - start + time.perf_counter() - resume) * 1000

    t_floor, t_floor_two = [], []
    t = {(who, kind): [] for who, _ in bins for kind in ("ack", "two", "drain")}
    for i in range(rounds):
        t_floor.append(timed([CFLOOR, md, "1", "claim"]))
        t_floor_two.append(two(([CFLOOR, md_two, "1", "take"], None),
                               lambda out: ([CFLOOR, md_two, out.split(b"\n", 1)[0].decode(), "remove"], None)))
        for who, binary in bins:
            t[who, "ack"].append(timed([binary, "recv", "q", "--ack"], env=homes[who, "ack"]))
            env = homes[who, "two"]
            t[who, "two"].append(two(([binary, "recv", "q", "--json"], env),
                                     lambda out, b=binary, e=env: ([b, "ack", "q", json.loads(out)["id"]], e)))
            if i < batches:
                t[who, "drain"].append(timed([binary, "recv", "q", "-n", str(drain), "--ack"],
                                             env=homes[who, "drain"]) / drain)
    floor, floor_two = median(t_floor), median(t_floor_two)
    record("C floor durable claim+read+remove (per process)", floor, "ms")
    record("C floor: take, then remove (two processes)", floor_two, "ms", "C claim floor", floor)
    for who, _ in bins:
        name = "relay" if who == "relay" else "baseline relay"
        record(f"{name} recv --ack (per process)", median(t[who, "ack"]), "ms", "C claim floor", floor, "<= 1.5x")
        record(f"{name} recv, then ack (two processes)", median(t[who, "two"]), "ms", "C take+remove", floor_two,
               "<= 1.5x", note="the same Maildir work as the claim floor, in two processes each")
        record(f"{name} recv, then ack, against the one-process floor", median(t[who, "two"]), "ms",
               "C claim floor", floor)
        record(f"{name} recv -n {drain} --ack (per message)", median(t[who, "drain"]), "ms", "C claim floor",
               floor, "<= 0.2x", note="the floor run once per message; the bar is 5x faster")
    if BASELINE:
        for kind, what in (("ack", "recv --ack"), ("two", "recv, then ack"), ("drain", f"recv -n {drain} --ack")):
            record(f"relay {what} vs the baseline's", median(t["relay", kind]), "ms", "baseline",
                   median(t["baseline", kind]))


def growth(rounds):
    # Capacity well above 999, so no backpressure warning muddies the figure.
    config = {"reliability": {"rateLimit": {"enabled": False}, "backpressure": {"maxMailboxSize": 100000}}}
    home_empty, env_empty = relay_home(config)
    home_full, env_full = relay_home(config)
    filler = "".join(json.dumps({"subject": "q", "payload": i}) + "\n" for i in range(999))
    subprocess.run([RELAY, "send", "--batch", "--no-fsync"], env=env_full, input=filler.encode(),
                   stdout=subprocess.DEVNULL, check=True)
    at0, at999 = [], []
    for _ in range(rounds):
        at0.append(timed([RELAY, "send", "q", "x"], env=env_empty))
        # Keep the full mailbox at 999: send one, claim and ack one.
        at999.append(timed([RELAY, "send", "q", "x"], env=env_full))
        out = subprocess.run([RELAY, "recv", "q", "--json"], env=env_full, capture_output=True, check=True).stdout
        subprocess.run([RELAY, "ack", "q", json.loads(out)["id"]], env=env_full, check=True)
    record("send at depth 999 vs depth 0", median(at999), "ms", "depth 0", median(at0), "<= 1.1x")


def status_scale():
    eps = [f"agent.e{i}" for i in range(200)]
    home, env = relay_home({}, endpoints=eps)
    subprocess.run([RELAY, "status", "--json"], env=env, stdout=subprocess.DEVNULL, check=True)
    db = os.path.join(home, "relay.db")
    # 100k finished index rows, as after a day of traffic (inserted directly).
    subprocess.run(["sqlite3", db, """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
        INSERT INTO messages (endpoint, id, subject, sender, trace_id, status, sent_at, claimed_at, done_at)
        SELECT 'agent.e' || (i % 200), printf('%026d', i), 'agent.e' || (i % 200), 'bench', printf('%026d', i),
               'acked', 1700000000000 + i, 1700000000010 + i, 1700000000020 + i FROM n;"""], check=True)
    times = [timed([RELAY, "status", "--json"], env=env) for _ in range(15)]
    record("status: 200 endpoints, 100k index rows", median(times), "ms", bar="< 100 ms")
    times = [timed([RELAY, "metrics", "--json"], env=env) for _ in range(5)]
    record("metrics: 100k index rows", median(times), "ms")


def index_growth(n):
    """The index after n messages, and after a gc once they are past
    retention (rows inserted directly, as a day of finished traffic)."""
    home, env = relay_home({}, endpoints=["agent.e0"])
    subprocess.run([RELAY, "status", "--json"], env=env, stdout=subprocess.DEVNULL, check=True)
    db = os.path.join(home, "relay.db")
    subprocess.run(["sqlite3", db, f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
        INSERT INTO messages (endpoint, id, subject, sender, trace_id, status, sent_at, claimed_at, done_at)
        SELECT 'agent.e0', printf('%026d', i), 'agent.e0', 'bench', printf('%026d', i),
               'acked', 1700000000000 + i, 1700000000010 + i, 1700000000020 + i FROM n;"""], check=True)
    subprocess.run(["sqlite3", db, "PRAGMA wal_checkpoint(TRUNCATE);"], stdout=subprocess.DEVNULL, check=True)

    def index_size():
        return sum(os.path.getsize(os.path.join(home, f)) for f in os.listdir(home) if f.startswith("relay.db"))
    record(f"index size with {n // 1000}k rows", index_size() / 1e6, "MB")
    # Retention: a gc run once the rows are past retention.days (7) hands
    # their pages back, so the file holds what retention keeps, not a peak.
    later = str(int(time.time() * 1000) + 8 * 86_400_000)
    start = time.perf_counter()
    subprocess.run([RELAY, "gc"], env=dict(env, RELAY_FAKE_NOW_MS=later), stdout=subprocess.DEVNULL, check=True)
    took = (time.perf_counter() - start) * 1000
    subprocess.run(["sqlite3", db, "PRAGMA wal_checkpoint(TRUNCATE);"], stdout=subprocess.DEVNULL, check=True)
    record(f"gc pruning {n // 1000}k rows past retention", took, "ms")
    record("index size after that gc", index_size() / 1e6, "MB")


def memory():
    _, env = relay_home({})
    peak = []
    for _ in range(5):
        out = subprocess.run(["/usr/bin/time", "-f", "%M", RELAY, "send", "q", "x"], env=env,
                             capture_output=True, text=True, check=True)
        peak.append(int(out.stderr.strip().splitlines()[-1]))
    record("peak RSS of send", median(peak) / 1024, "MB", bar="<= 8 MB")
    follower = subprocess.Popen([RELAY, "recv", "q", "--follow", "--ack"], env=env, stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # let it settle into its idle wait; this measures memory, not time
    with open(f"/proc/{follower.pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    follower.terminate()
    follower.wait()
    record("RSS of idle recv --follow", rss / 1024, "MB")


def main():
    given = os.environ.get("RELAY_BENCH_BIN")
    if BASELINE:
        # Named relay, as the tree's build, so that what it prints is alike.
        os.makedirs(os.path.dirname(BASELINE))
        shutil.copy2(os.environ["RELAY_BENCH_BASELINE"], BASELINE)
    if given:
        # A relay built elsewhere (e.g. the commit before a change, to
        # compare): used as both builds.
        shutil.copy2(given, RELAY)
        shutil.copy2(given, RELAY_DYNAMIC)
    else:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        built = os.path.join(target, "release", "relay")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        shutil.copy2(built, RELAY_DYNAMIC)
        subprocess.run(["cargo", "rustc", "--release", "--quiet", "--bin", "relay", "--",
                        "-C", "target-feature=+crt-static", "-C", "relocation-model=static"], cwd=ROOT, check=True)
        shutil.copy2(built, RELAY)
    subprocess.run(["gcc", "-O2", "-o", CFLOOR, os.path.join(ROOT, "bench", "cfloor.c")], check=True)
    print(f"relay benchmarks ({'quick' if QUICK else 'full'}), scratch {SCRATCH}\n")
    only = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")), None)
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1]
    runs = [
        ("send", lambda: per_process_send(40 if QUICK else 200)),
        ("batch", lambda: batch(5000 if QUICK else 20000)),
        ("recv_ack", lambda: recv_ack(500 if QUICK else 2000)),
        ("consume", lambda: consume(40 if QUICK else 200)),
        ("growth", lambda: growth(30 if QUICK else 150)),
        ("status", status_scale),
        ("index", lambda: index_growth(100_000 if QUICK else 1_000_000)),
        ("memory", memory),
    ]
    try:
        for name, run in runs:
            if only is None or name in only.split(","):
                run()
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    if only is not None or given or BASELINE:
        return  # a partial run, or not the tree's own build: results.json stays
    out = os.path.join(ROOT, "bench", "results.json")
    with open(out, "w") as f:
        json.dump({"quick": QUICK, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "results": RESULTS}, f, indent=2)
        f.write("\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
