"""PyTorch side of bench/model.sh: the baseline's SpamClassifier (../shared/baseline/
spam_model.py, same encoder weights) in one process, measured exactly like
examples/bench_model.rs: batch-1 latency of predict_proba over the bench inputs, then
throughput at larger batches of consecutive inputs padded to their longest.

Run with the baseline's venv: $BASELINE_HOME/venv/bin/python bench/torch_model.py --threads 1
"""
import argparse, json, os, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--n", type=int, default=300)
p.add_argument("--warmup", type=int, default=30)
p.add_argument("--batches", default="8,32")
p.add_argument("--inputs", default="../shared/bench/inputs.jsonl")
p.add_argument("--baseline", default="../shared/baseline")
a = p.parse_args()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(a.baseline).resolve()))
import torch  # noqa: E402
torch.set_num_threads(a.threads)
from spam_model import SpamClassifier  # noqa: E402

texts = [json.loads(l)["text"] for l in open(a.inputs, encoding="utf-8") if l.strip()]
t0 = time.perf_counter()
m = SpamClassifier()
load_s = time.perf_counter() - t0

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

with torch.inference_mode():
    for i in range(a.warmup):
        m.predict_proba([texts[i % len(texts)]])
    lat = []
    t_all = time.perf_counter()
    for i in range(a.n):
        t = time.perf_counter()
        m.predict_proba([texts[i % len(texts)]])
        lat.append((time.perf_counter() - t) * 1e3)
    rate = a.n / (time.perf_counter() - t_all)
    out = {"impl": "pytorch", "threads": a.threads, "load_s": load_s, "b1_p50_ms": pct(lat, .5),
           "b1_p90_ms": pct(lat, .9), "b1_p99_ms": pct(lat, .99), "b1_msgs_per_s": rate}
    print(f"pytorch {torch.__version__}, {a.threads} thread(s): load {load_s:.3f} s")
    print(f"  batch  1: p50 {pct(lat,.5):.2f} ms, p90 {pct(lat,.9):.2f} ms, p99 {pct(lat,.99):.2f} ms per message ({rate:.1f} msgs/s)")
    for b in [int(x) for x in a.batches.split(",") if x.strip()]:
        rounds = max(a.n // b, 4)
        batch_at = lambda r: [texts[(r * b + j) % len(texts)] for j in range(b)]
        m.predict_proba(batch_at(0))
        t = time.perf_counter()
        for r in range(rounds):
            m.predict_proba(batch_at(r))
        r8 = rounds * b / (time.perf_counter() - t)
        print(f"  batch {b:>2}: {r8:.1f} msgs/s")
        out[f"b{b}_msgs_per_s"] = r8
    print(json.dumps(out))
