"""Prints the worker benchmark's table from the raw figures scripts/bench/worker.sh leaves in its
scratch folder, and writes them as JSON (usage: worker_summary.py SCRATCH_DIR OUT_JSON)."""
import json, os, re, sys
from datetime import datetime

tmp, out = sys.argv[1], sys.argv[2]
rows = [l.split() for l in open(tmp + "/rows") if l.strip()]

def totals(name):
    """The run's own totals (the worker's exit line, apply's summary): a figure over rejected
    messages is no figure."""
    for path in ("target/bench/%s.log" % name, "target/bench/%s.out" % name):
        for line in open(path, errors="replace"):
            if "worker stopped" in line or line.startswith("applied "):
                return {k: int(v) for k, v in re.findall(r"(\w+)\W+(\d+)", line)}
    return {}

def stages(name):
    """Where a worker run's time went: the exit line's per-stage counts and mean times."""
    try:
        for line in open("target/bench/%s.log" % name, errors="replace"):
            m = re.search(r'"stages":"([^"]*)"', line)
            if m:
                return m.group(1)
    except FileNotFoundError:
        pass
    return None

def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None

def latency(name):
    """Event-to-commit of the steady load: published -> recorded in the event log; and, from the
    worker's debug line for each decision (written after the commit, with the message's SQS
    SentTimestamp), the delivery by SNS or EventBridge and the worker's own part after it."""
    committed = {}
    for line in open("%s/%s-latency.committed.tsv" % (tmp, name)):
        message_id, recorded = line.rstrip("\n").split("\t")
        committed[message_id] = int(recorded)
    decided = {}
    for line in open("target/bench/%s-latency.log" % name, errors="replace"):
        if '"message decided"' not in line:
            continue
        d = json.loads(line)
        at = datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp() * 1000
        decided[d["event_id"]] = (at, d.get("sqs_sent_ms"))
    total, worker, delivery, missing = [], [], [], 0
    for line in open("%s/%s-latency.published.jsonl" % (tmp, name)):
        p = json.loads(line)
        if p["id"] not in committed:
            missing += 1
            continue
        total.append(committed[p["id"]] - p["published_ms"])
        at, sent = decided.get(p["id"], (None, None))
        if sent is not None:
            delivery.append(sent - p["published_ms"])
            worker.append(round(at - sent))
    return {"events": len(total), "not_committed": missing,
            "commit_p50_ms": quantile(total, 0.5), "commit_p99_ms": quantile(total, 0.99),
            "delivery_p50_ms": quantile(delivery, 0.5), "delivery_p99_ms": quantile(delivery, 0.99),
            "worker_p50_ms": quantile(worker, 0.5), "worker_p99_ms": quantile(worker, 0.99)}

idle = {}
for line in open(tmp + "/idle"):
    name, before, after, hwm = line.split()
    idle[name.replace("-latency", "")] = (int(before), int(after), int(hwm))

# A ratio only against a ceiling that is the queue's: below the floor LocalStack itself is the
# bottleneck and a worker keeping pace with it shows nothing.
floor = float(os.environ.get("MPLINK_BENCH_CEILING_FLOOR", "1500"))
table = []
ceiling = None
for name, sent, wall, cpu, rss in rows:
    sent, wall, cpu, rss = int(sent), float(wall), float(cpu), int(rss)
    rate = sent / wall
    if name.startswith("ceiling"):
        ceiling = rate
    drain = not name.startswith("ceiling") and not name.endswith("-apply")
    row = {"run": name, "messages": sent, "seconds": round(wall, 2), "msg_per_s": round(rate, 1),
           "ratio_to_ceiling": round(rate / ceiling, 2) if ceiling and ceiling >= floor and drain else None,
           "ceiling_msg_per_s": round(ceiling, 1) if ceiling and drain else None,
           "cpu_s_per_10k": round(cpu / sent * 10000, 2), "peak_rss_mib": round(rss / 1024, 1)}
    if not name.startswith("ceiling"):
        t = totals(name)
        row.update({k: t.get(k) for k in ("received", "applied", "stale", "duplicate", "rejected")})
        row["stages"] = stages(name)
    # The light load's figures go with the backend's first drain.
    backend = name.split("-")[0]
    if drain and backend in idle:
        before, after, hwm = idle.pop(backend)
        row.update({"idle_rss_mib_before_load": round(before / 1024, 1),
                    "idle_rss_mib_after_load": round(after / 1024, 1),
                    "light_load_peak_rss_mib": round(hwm / 1024, 1)})
        row["light_load"] = latency(backend)
    table.append(row)

def cell(v):
    return "-" if v is None else str(v)

print("| run | messages | msg/s | ratio to ceiling | CPU-s per 10k | peak RSS MiB | idle RSS MiB before / after load | event-to-commit p50 / p99 ms | of which the worker's, from SQS's SentTimestamp, p50 / p99 ms | applied+stale / duplicate / rejected |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in table:
    decided = "-" if r["run"].startswith("ceiling") else "%s / %s / %s" % (
        (r.get("applied") or 0) + (r.get("stale") or 0), r.get("duplicate"), r.get("rejected"))
    lat = r.get("light_load") or {}
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        r["run"], r["messages"], r["msg_per_s"], cell(r["ratio_to_ceiling"]), r["cpu_s_per_10k"],
        r["peak_rss_mib"],
        "-" if "idle_rss_mib_before_load" not in r else "%s / %s" % (r["idle_rss_mib_before_load"], r["idle_rss_mib_after_load"]),
        "-" if not lat else "%s / %s" % (cell(lat["commit_p50_ms"]), cell(lat["commit_p99_ms"])),
        "-" if not lat else "%s / %s" % (cell(lat["worker_p50_ms"]), cell(lat["worker_p99_ms"])),
        decided))
for r in table:
    if r.get("ceiling_msg_per_s") is None:
        continue
    if r["ratio_to_ceiling"] is None:
        print("%s: no ratio: its ceiling ran at %s msg/s, below the floor of %.0f (LocalStack set the pace)" % (
            r["run"], r["ceiling_msg_per_s"], floor))
    else:
        print("%s: %s of the ceiling's %s msg/s (floor %.0f)" % (
            r["run"], r["ratio_to_ceiling"], r["ceiling_msg_per_s"], floor))
for r in table:
    if r.get("stages"):
        print("%s stages (calls or batches x mean): %s" % (r["run"], r["stages"]))
for r in table:
    lat = r.get("light_load")
    if lat:
        print("%s light load: %s events committed (%s not), SNS/EventBridge delivery to SQS p50 %s ms, p99 %s ms" % (
            r["run"], lat["events"], lat["not_committed"], lat["delivery_p50_ms"], lat["delivery_p99_ms"]))
json.dump(table, open(out, "w"), indent=1)
