#!/usr/bin/env python3
"""Poison tasks against a running celeriac: what one bad input costs.

Two scenarios on the `debug` pool of config/debug.toml, each against a fresh server
(bench/poison.sh starts them):

  burst  40 `debug.panic` tasks at once, then 200 `debug.echo` tasks.
  mixed  2,000 `debug.sleep` tasks (0-3 ms) with 60 `debug.panic` tasks among them.

A thread probes /health/ready every 5 ms throughout. Prints one JSON line per scenario:
how the tasks ended, how long readiness was not 200, and the wall time. Standard
library only.

  bench/poison.py http://127.0.0.1:18080 burst
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


REFUSED = {"count": 0}


def submit_many(base, task, inputs):
    status, body = call("POST", f"{base}/v1/tasks/{task}/batch", {"inputs": inputs})
    if status == 503:  # the pool is down: counted, not queued
        REFUSED["count"] += len(inputs)
        return []
    assert status == 202, (status, body)
    return [t["task_id"] for t in body["tasks"]]


def final(base, task_id):
    while True:
        status, view = call("GET", f"{base}/v1/tasks/{task_id}?wait=30")
        assert status == 200, (status, view)
        if view["state"] in ("SUCCESS", "FAILURE", "REVOKED"):
            return view


class ReadinessProbe(threading.Thread):
    def __init__(self, base):
        super().__init__(daemon=True)
        self.base, self.stop, self.not_ready_s, self.probes = base, False, 0.0, 0

    def run(self):
        last = time.monotonic()
        while not self.stop:
            status, _ = call("GET", f"{self.base}/health/ready")
            now = time.monotonic()
            if status != 200:
                self.not_ready_s += now - last
            last = now
            self.probes += 1
            time.sleep(0.005)


def tally(views):
    out = {}
    for v in views:
        out[v["state"]] = out.get(v["state"], 0) + 1
    return out


def main():
    base, scenario = sys.argv[1], sys.argv[2]
    probe = ReadinessProbe(base)
    probe.start()
    t0 = time.monotonic()
    if scenario == "burst":
        poison = submit_many(base, "debug.panic", [{} for _ in range(40)])
        normal = submit_many(base, "debug.echo", [{"i": i} for i in range(200)])
    else:
        normal, poison = [], []
        for chunk in range(20):
            normal += submit_many(
                base, "debug.sleep", [{"ms": (chunk + i) % 4} for i in range(100)]
            )
            poison += submit_many(base, "debug.panic", [{} for _ in range(3)])
    normal_views = [final(base, i) for i in normal]
    poison_views = [final(base, i) for i in poison]
    wall = time.monotonic() - t0
    probe.stop = True
    probe.join()
    print(
        json.dumps(
            {
                "scenario": scenario,
                "normal": tally(normal_views),
                "poison": tally(poison_views),
                "poison_retries": sum(v["retries"] for v in poison_views),
                "refused_503": REFUSED["count"],
                "not_ready_seconds": round(probe.not_ready_s, 3),
                "readiness_probes": probe.probes,
                "wall_seconds": round(wall, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
