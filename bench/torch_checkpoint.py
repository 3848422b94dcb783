"""PyTorch side of bench/model.sh's per-architecture rows: a Hugging Face
sequence-classification checkpoint with transformers' AutoModelForSequenceClassification,
measured as examples/bench_checkpoint.rs measures it: batch-1 latency (tokenizing
included), then throughput at batches of 8 and 32 consecutive inputs padded to their
longest, truncation at 256 tokens. Prints one JSON line last.

    python bench/torch_checkpoint.py --model DIR --name bert --threads 1
"""
import argparse, json, os, time

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--name", default=None)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--n", type=int, default=300)
p.add_argument("--warmup", type=int, default=30)
p.add_argument("--inputs", default="../shared/bench/inputs.jsonl")
a = p.parse_args()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

torch.set_num_threads(a.threads)
texts = [json.loads(l)["text"] for l in open(a.inputs, encoding="utf-8") if l.strip()]
t0 = time.perf_counter()
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForSequenceClassification.from_pretrained(a.model).eval()
load_s = time.perf_counter() - t0


def predict(batch):
    enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        return torch.softmax(model(**enc).logits, -1)


for i in range(a.warmup):
    predict([texts[i % len(texts)]])
lat = []
t_all = time.perf_counter()
for i in range(a.n):
    t = time.perf_counter()
    predict([texts[i % len(texts)]])
    lat.append((time.perf_counter() - t) * 1e3)
b1 = a.n / (time.perf_counter() - t_all)
lat.sort()
pct = lambda q: lat[round((len(lat) - 1) * q)]
row = {"impl": f"pytorch {a.name or a.model} f32", "kernel": f"torch {torch.__version__}",
       "threads": a.threads, "load_s": load_s, "b1_p50_ms": pct(0.5), "b1_p99_ms": pct(0.99),
       "b1_msgs_per_s": b1}
for b in (8, 32):
    rounds = max(a.n // b, 4)
    batch_at = lambda r: [texts[(r * b + j) % len(texts)] for j in range(b)]
    predict(batch_at(0))
    t = time.perf_counter()
    for r in range(rounds):
        predict(batch_at(r))
    row[f"b{b}_msgs_per_s"] = rounds * b / (time.perf_counter() - t)
print(json.dumps(row))
