#!/usr/bin/env python3
"""A stand-in for a training job's inspection endpoint, to work on the web page without a job:
serves src/cli/inspect_page.html at "/", Debian's dygraphs at /dygraph.min.js and /dygraph.min.css,
and made-up JSON in the shapes the real endpoint serves (/api/status, /api/history?after=N,
/api/moe, /api/timeline, the POST controls). A simulated job advances a step every
--step-seconds: loss, throughput, MFU, learning rate, grad norm and memory per step, validation
every --validation-freq steps, a MoE load (4 layers x 8 experts) and a 1F1B pipeline timeline of
its ranks (4 micro-batches), both refreshed every few steps. --dump DIR writes DIR/metrics.jsonl as
the real metrics sink does, so tests/oracle/inspect_page_check.py --base URL --dump DIR can check
the loss chart against it. GET /mock/requests lists the requests served (time, method, path), to
check how the page polls. --proxy URL serves the page file as it is now but takes every /api/ and
/metrics request to a real job's endpoint (a page edit shows without rebuilding the binary).

  python3 tests/oracle/inspect_page_mock.py --port 8765 [--cpu] [--slow-rank 1] [--quiet-rank 1]
"""
import argparse, json, math, os, random, threading, time, urllib.error, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DYGRAPHS = "/usr/share/javascript/dygraphs"
GiB = 1024 ** 3


class Job:
    """The simulated job: advances one step every step_seconds unless paused."""

    def __init__(self, a):
        self.a = a
        self.lock = threading.Lock()
        self.rng = random.Random(a.seed)
        self.step, self.steps = a.start_step, a.steps
        self.state, self.pause_requested = "running", False
        self.log_freq = 10
        self.rows, self.validation = [], []
        self.rank_recent = {r: ([], []) for r in range(a.ranks)}
        self.rank_last = {}
        self.moe, self.timeline = {"step": 0, "layers": []}, {"step": 0, "ranks": []}
        self.t0 = time.time()
        self.quiet_since = None
        self.handled = {}
        self.requests = []
        self.jsonl = None
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
            self.jsonl = open(os.path.join(a.dump, "metrics.jsonl"), "a")

    # --- one step -----------------------------------------------------------------------------
    def lr(self, s):
        peak, warm = 8e-4, 2
        if s <= warm:
            return peak * s / warm
        return peak * max(0.0, 1 - (s - warm) / max(1, self.steps - warm))

    def advance(self):
        a, rng, s = self.a, self.rng, self.step + 1
        loss = 2.1 + 8.7 * math.exp(-s / 45) + 0.25 * math.exp(-s / 300) * math.sin(s / 3) + rng.gauss(0, 0.06)
        grad_norm = 0.45 + 3.5 * math.exp(-s / 25) + abs(rng.gauss(0, 0.12))
        per_rank = {}
        for r in range(a.ranks):
            slow = 2.3 if r == a.slow_rank else 1.0
            compute = (0.150 + rng.gauss(0, 0.006)) * slow
            comm = max(0.0, 0.030 + rng.gauss(0, 0.004))
            data = max(0.0, 0.0012 + rng.gauss(0, 0.0003))
            opt = max(0.0, 0.021 + rng.gauss(0, 0.001))
            mem = (12.4 if not a.cpu else 1.15) * GiB + 30e6 * math.log1p(s) + rng.gauss(0, 4e6)
            per_rank[r] = dict(compute=compute, comm=comm, data=data, opt=opt, step=compute + comm + data + opt, mem=mem)
        wall = max(v["step"] for v in per_rank.values())
        tokens = a.ranks * 2 * 64 * 16
        tps = tokens / wall
        mfu = 0.0 if a.cpu else 0.385 + rng.gauss(0, 0.01)
        memory = max(v["mem"] for v in per_rank.values())
        with self.lock:
            self.step = s
            self.rows.append([s, loss, tps, mfu, self.lr(s), grad_norm, memory])
            del self.rows[:-2000]
            for r, v in per_rank.items():
                st, mm = self.rank_recent[r]
                st.append(v["step"]); mm.append(v["mem"])
                del st[:-60]; del mm[:-60]
                self.rank_last[r] = v
            self.last = dict(loss=loss, tps=tps, mfu=mfu, lr=self.lr(s), grad_norm=grad_norm, wall=wall, memory=memory)
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": s, "loss": loss, "grad_norm": grad_norm, "lr": self.lr(s), "tokens": tokens,
                                         "wall_seconds": wall, "tps": tps, "mfu": mfu,
                                         "gpu_peak_active_bytes": 0 if a.cpu else int(memory),
                                         "rss_bytes": int(memory if a.cpu else 1.3 * GiB)}) + "\n")
            self.jsonl.flush()
        if a.validation_freq and s % a.validation_freq == 0:
            vloss = loss + 0.12 + rng.gauss(0, 0.03)
            with self.lock:
                self.validation.append([s, vloss])
            if self.jsonl:
                self.jsonl.write(json.dumps({"step": s, "validation_loss": vloss, "validation_perplexity": math.exp(vloss)}) + "\n")
                self.jsonl.flush()
        if not a.no_moe and (s % 5 == 0 or not self.moe["layers"]):
            self.make_moe(s)
        if not a.no_timeline and (s % 3 == 0 or not self.timeline["ranks"]):
            self.make_timeline(s)

    def make_moe(self, s):
        rng, layers = self.rng, []
        for l in range(4):
            logits = [math.sin(0.7 * e + 1.9 * l) * (0.4 + 0.8 * math.exp(-s / 60)) + rng.gauss(0, 0.12) for e in range(8)]
            if l == 2:
                logits[5] += 1.2 * math.exp(-s / 120) + 0.4  # one busy expert
            z = sum(math.exp(v) for v in logits)
            total = 2 * 64 * 2 * self.a.ranks  # tokens x top-k
            layers.append({"name": f"layers.{2 * l + 1}", "tokens_per_expert": [round(total * math.exp(v) / z) for v in logits]})
        with self.lock:
            self.moe = {"step": s, "layers": layers}

    def make_timeline(self, s):
        """1F1B over the ranks as pipeline stages, 4 micro-batches; sends and receives as instants."""
        rng, S, M = self.rng, self.a.ranks, 4
        order = []
        for st in range(S):
            warm = min(S - st - 1, M)
            ops = [("F", m) for m in range(warm)]
            f, b = warm, 0
            while f < M or b < M:
                if f < M:
                    ops.append(("F", f)); f += 1
                if b < M and (f >= M or b < f):
                    ops.append(("B", b)); b += 1
            order.append(ops)
        done, free, lat = {}, [0.0] * S, 0.15
        actions = [[] for _ in range(S)]
        pending = [list(o) for o in order]
        while any(pending):
            progressed = False
            for st in range(S):
                if not pending[st]:
                    continue
                op, m = pending[st][0]
                if op == "F":
                    dep = done.get(("F", st - 1, m)) if st > 0 else 0.0
                else:
                    dep = done.get(("B", st + 1, m)) if st < S - 1 else done.get(("F", st, m))
                if dep is None:
                    continue
                ready = dep + (lat if (op == "F" and st > 0) or (op == "B" and st < S - 1) else 0)
                start = max(free[st], ready)
                if ready > 0 and ((op == "F" and st > 0) or (op == "B" and st < S - 1)):
                    actions[st].append({"op": "recv", "stage": st, "microbatch": m, "start_ms": round(start, 3), "end_ms": round(start, 3)})
                dur = (3.1 if op == "F" else 6.3) * (1 + rng.gauss(0, 0.04)) * (1.6 if st == self.a.slow_rank else 1)
                end = start + dur
                actions[st].append({"op": op, "stage": st, "microbatch": m, "start_ms": round(start, 3), "end_ms": round(end, 3)})
                if (op == "F" and st < S - 1) or (op == "B" and st > 0):
                    actions[st].append({"op": "send", "stage": st, "microbatch": m, "start_ms": round(end, 3), "end_ms": round(end, 3)})
                done[(op, st, m)] = end
                free[st] = end
                pending[st].pop(0)
                progressed = True
            if not progressed:
                break
        with self.lock:
            self.timeline = {"step": s, "ranks": [{"rank": r, "actions": actions[r]} for r in range(S)]}

    def run(self):
        while True:
            time.sleep(self.a.step_seconds)
            with self.lock:
                if self.pause_requested and self.state == "running":
                    self.state = "paused"
                if self.state != "running" or self.step >= self.steps:
                    if self.step >= self.steps:
                        self.state = "done"
                    continue
            self.advance()

    # --- the JSON -----------------------------------------------------------------------------
    def status(self):
        a, now = self.a, time.time()
        with self.lock:
            last = getattr(self, "last", None) or dict(loss=0, tps=0, mfu=0, lr=0, grad_norm=0, wall=0, memory=0)
            ranks, actors = [], []
            for r in range(a.ranks):
                v = self.rank_last.get(r)
                st, mm = self.rank_recent[r]
                if v:
                    ranks.append({"rank": r, "node": r // a.ranks_per_node, "step": self.step,
                                  "step_seconds": v["step"], "compute_seconds": v["compute"], "comm_wait_seconds": v["comm"],
                                  "data_wait_seconds": v["data"], "optimizer_seconds": v["opt"], "memory_bytes": int(v["mem"]),
                                  "memory_kind": "rss" if a.cpu else "gpu_active",
                                  "recent_step_seconds": list(st), "recent_memory_bytes": [int(x) for x in mm]})
            age = now - self.t0
            for r in range(a.ranks):
                quiet = r == a.quiet_rank and self.state == "running"
                self.handled[r] = self.handled.get(r, 0) + 3
                actors.append({"name": f"stage[{r}]", "kind": "stage", "node": r // a.ranks_per_node, "rank": r,
                               "state": ("waiting" if quiet else "computing") if self.state == "running" else "idle",
                               "step": self.step, "micro_batch": 1, "mailbox": 0, "handled": self.handled[r],
                               "busy_seconds": 0.8 * age, "age_seconds": age, "bytes_in_flight": 0, "last_error": "", "detail": "",
                               "activity": "all_reduce of the gradients (dp)" if quiet else f"forward of unit {self.step % 4}",
                               "quiet_seconds": (now - self.t0) % 40 + 5 if quiet else 0.1,
                               "collective": (f"oldest unfinished: all_reduce #{self.step * 3} of dp in step {self.step}, "
                                              "started 12.4 s ago, 1 of 2 ranks joined") if quiet else
                               f"last: all_reduce #{self.step * 3} of dp in step {self.step}, finished",
                               "recent_messages": []})
                actors.append({"name": f"data_loader[{r}]", "kind": "data_loader", "node": r // a.ranks_per_node, "rank": r,
                               "state": "idle", "step": self.step, "micro_batch": 0, "mailbox": 0, "handled": self.step * 2,
                               "busy_seconds": 0.02 * age, "age_seconds": age, "bytes_in_flight": 0, "last_error": "",
                               "detail": "", "activity": "batch ready", "quiet_seconds": 0.3, "collective": "", "recent_messages": []})
            for name in ("coordinator", "metrics_sink", "node_supervisor"):
                actors.append({"name": name, "kind": name, "node": 0, "rank": -1, "state": "idle", "step": self.step,
                               "micro_batch": 0, "mailbox": 0, "handled": self.step, "busy_seconds": 0.01 * age,
                               "age_seconds": age, "bytes_in_flight": 0, "last_error": "", "detail": "", "activity": "",
                               "quiet_seconds": 0.2, "collective": "", "recent_messages": []})
            job = {"state": self.state, "step": self.step, "steps": self.steps, "loss": last["loss"],
                   "tokens_per_second": last["tps"], "mfu": last["mfu"],
                   "eta_seconds": (self.steps - self.step) * a.step_seconds,
                   "gpu_peak_active_bytes": 0 if a.cpu else int(last["memory"]), "log_freq": self.log_freq,
                   "last_checkpoint": "", "nodes": (a.ranks + a.ranks_per_node - 1) // a.ranks_per_node, "ranks": a.ranks,
                   "lr": last["lr"], "grad_norm": last["grad_norm"],
                   "validation_loss": self.validation[-1][1] if self.validation else None,
                   "moe_step": self.moe["step"], "timeline_step": self.timeline["step"]}
        return {"time": now, "job": job, "rank_steps": ranks, "actors": actors}

    def history(self, after):
        with self.lock:
            rows = [r for r in self.rows if after is None or r[0] > after]
            return {"columns": ["step", "loss", "tokens_per_second", "mfu", "lr", "grad_norm", "memory_bytes"],
                    "memory_kind": "rss" if self.a.cpu else "gpu_active", "rows": rows, "validation": list(self.validation)}


def make_handler(job, a):
    page_path = a.page

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            if a.verbose:
                super().log_message(*args)

        def send(self, code, body, ctype):
            if isinstance(body, str):
                body = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def json(self, obj, code=200):
            self.send(code, json.dumps(obj), "application/json")

        def authorized(self, params):
            if not a.token:
                return True
            return self.headers.get("Authorization") == "Bearer " + a.token or params.get("token", [None])[0] == a.token

        def route(self, method):
            u = urlparse(self.path)
            params = parse_qs(u.query)
            with job.lock:
                job.requests.append([round(time.time() - job.t0, 3), method, self.path])
                del job.requests[:-5000]
            if not self.authorized(params):
                return self.json({"error": "missing or wrong token"}, 401)
            if a.proxy and (u.path.startswith("/api/") or u.path == "/metrics"):
                return self.forward(method)
            if method == "GET":
                if u.path == "/":
                    with open(page_path, "rb") as f:
                        return self.send(200, f.read(), "text/html; charset=utf-8")
                if u.path == "/dygraph.min.js":
                    with open(os.path.join(DYGRAPHS, "dygraph.min.js"), "rb") as f:
                        return self.send(200, f.read(), "application/javascript; charset=utf-8")
                if u.path == "/dygraph.min.css":
                    with open(os.path.join(DYGRAPHS, "dygraph.min.css"), "rb") as f:
                        return self.send(200, f.read(), "text/css; charset=utf-8")
                if u.path == "/api/status":
                    return self.json(job.status())
                if u.path == "/api/history":
                    after = None
                    if "after" in params:
                        try:
                            after = float(params["after"][0])
                        except ValueError:
                            return self.json({"error": "after needs a step number"}, 400)
                    return self.json(job.history(after))
                if u.path == "/api/moe":
                    with job.lock:
                        return self.json(job.moe)
                if u.path == "/api/timeline":
                    with job.lock:
                        return self.json(job.timeline)
                if u.path == "/mock/requests":
                    with job.lock:
                        return self.json(job.requests)
            if method == "POST":
                action = u.path.removeprefix("/api/")
                with job.lock:
                    if action == "pause":
                        job.pause_requested = True
                    elif action == "resume":
                        job.pause_requested = False
                        if job.state == "paused":
                            job.state = "running"
                    elif action == "checkpoint":
                        return self.json({"error": "checkpoint.enable is false in this job"}, 409)
                    elif action == "log_freq":
                        try:
                            n = int(params.get("value", [""])[0])
                        except ValueError:
                            n = 0
                        if n < 1:
                            return self.json({"error": "log_freq needs ?value=N with N >= 1"}, 400)
                        job.log_freq = n
                    else:
                        return self.json({"error": "no such action"}, 404)
                return self.json({"accepted": action}, 202)
            return self.json({"error": "not found"}, 404)

        def forward(self, method):
            req = urllib.request.Request(a.proxy.rstrip("/") + self.path, method=method, data=b"" if method == "POST" else None)
            if self.headers.get("Authorization"):
                req.add_header("Authorization", self.headers["Authorization"])
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return self.send(r.status, r.read(), r.headers.get("Content-Type", "application/json"))
            except urllib.error.HTTPError as e:
                return self.send(e.code, e.read(), e.headers.get("Content-Type", "application/json"))
            except OSError as e:
                return self.json({"error": f"proxy: {e}"}, 502)

        def do_GET(self):
            self.route("GET")

        def do_POST(self):
            self.route("POST")

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--page", default=os.path.join(ROOT, "src/cli/inspect_page.html"))
    ap.add_argument("--token", default="")
    ap.add_argument("--proxy", help="a real endpoint (http://127.0.0.1:8470) to take /api/ requests to")
    ap.add_argument("--dump", help="write DIR/metrics.jsonl like the real metrics sink")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--ranks-per-node", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--start-step", type=int, default=0)
    ap.add_argument("--prefill", type=int, default=0, help="run this many steps at once before serving")
    ap.add_argument("--step-seconds", type=float, default=0.5)
    ap.add_argument("--validation-freq", type=int, default=5)
    ap.add_argument("--cpu", action="store_true", help="MFU 0 and RSS memory, as a CPU job reports")
    ap.add_argument("--slow-rank", type=int, default=-1)
    ap.add_argument("--quiet-rank", type=int, default=-1)
    ap.add_argument("--no-moe", action="store_true")
    ap.add_argument("--no-timeline", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    job = Job(a)
    if not a.proxy:
        for _ in range(a.prefill):
            job.advance()
        threading.Thread(target=job.run, daemon=True).start()
    server = ThreadingHTTPServer((a.host, a.port), make_handler(job, a))
    server.daemon_threads = True
    print(f"mock inspect endpoint: http://{a.host}:{server.server_port}/" + (f"?token={a.token}" if a.token else ""), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
