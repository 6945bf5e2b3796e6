#!/usr/bin/env python3
"""The inspection web page in headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): a CPU job with 2 ranks runs (validation every 5 steps, a token set); once it is past
step 12 the page must show
  - its six charts (window.charts: loss, tps, mfu, lr, grad_norm, memory, each a Dygraph) with
    numbers as the tick labels of both axes;
  - a row per rank in the ranks table (tr.rank[data-rank="1"] for the second);
  - its job line and one row per actor;
  - with the job paused, the loss chart's last point equal to the last loss in
    <dump_folder>/metrics.jsonl;
and it must make no request outside its own origin (the Resource Timing entries and Chrome's
network log), while /dygraph.min.js and /dygraph.min.css are Debian's libjs-dygraphs files, byte for
byte, with their content types.

  inspect_page_check.py --troupe build/troupe [--screenshot docs/inspect-page.png]
  inspect_page_check.py --base http://127.0.0.1:8765 [--dump DIR] [--token T]   (a running endpoint,
      e.g. tests/oracle/inspect_page_mock.py; the metrics.jsonl check needs --dump)

One line per check passed; the first failure ends it with a message."""
import argparse, json, math, os, re, secrets, signal, subprocess, sys, tempfile, time, urllib.error, urllib.parse, urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

DYGRAPHS = "/usr/share/javascript/dygraphs"
CHARTS = ["loss", "tps", "mfu", "lr", "grad_norm", "memory"]
ACTORS = ["stage[0]", "stage[1]", "data_loader[0]", "data_loader[1]", "coordinator", "metrics_sink", "node_supervisor"]
MIN_STEP = 12


def fail(why):
    sys.exit("inspect page check failed: " + why)


def ok(what):
    print("ok: " + what, flush=True)


class Endpoint:
    def __init__(self, base, token):
        self.base, self.token = base.rstrip("/"), token

    def url(self, path):
        if not self.token:
            return self.base + path
        return self.base + path + ("&" if "?" in path else "?") + "token=" + urllib.parse.quote(self.token)

    def get(self, path, timeout=5):
        with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
            return r.headers.get("Content-Type", ""), r.read()

    def json(self, path):
        return json.loads(self.get(path)[1])

    def post(self, path):
        with urllib.request.urlopen(urllib.request.Request(self.url(path), method="POST", data=b""), timeout=5) as r:
            return r.status


def wait_for_step(ep, step, job, seconds):
    deadline, last = time.time() + seconds, None
    while time.time() < deadline:
        if job is not None and job.poll() is not None:
            fail(f"the job ended (exit status {job.returncode}) before step {step}")
        try:
            last = ep.json("/api/status")
            if last["job"]["step"] >= step:
                return last
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    fail(f"the job's endpoint never showed step {step} in {seconds} s (last status: {json.dumps(last)[:300] if last else None})")


def check_library(ep):
    """The embedded library is Debian's file, served with its content type (and the token guards it)."""
    for name, types in (("dygraph.min.js", ("application/javascript", "text/javascript")), ("dygraph.min.css", ("text/css",))):
        ctype, body = ep.get("/" + name)
        with open(os.path.join(DYGRAPHS, name), "rb") as f:
            want = f.read()
        if not ctype.startswith(types):
            fail(f"/{name} is served as {ctype!r}, not {' or '.join(types)}")
        if body != want:
            fail(f"/{name} differs from {DYGRAPHS}/{name}: {len(body)} bytes served, {len(want)} in the package")
        ok(f"/{name} is {DYGRAPHS}/{name} ({len(body)} bytes, {ctype})")
        if ep.token:
            try:
                urllib.request.urlopen(ep.base + "/" + name, timeout=5)
                fail(f"/{name} was served without the token")
            except urllib.error.HTTPError as e:
                if e.code != 401:
                    fail(f"/{name} without the token: HTTP {e.code}, not 401")


def is_number(label):
    t = label.strip().replace(",", "").replace("\u2212", "-").replace("\u2009", "")
    t = re.sub(r"(?<=\d)[kKMGBT]$", "", t)
    try:
        return math.isfinite(float(t))
    except ValueError:
        return False


def wait_js(browser, script, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if browser.execute_script(script):
                return
        except Exception:  # the page may be mid-load
            pass
        time.sleep(0.25)
    fail(f"{what} (waited {seconds} s)")


def check_charts(browser):
    wait_js(browser, "return window.charts && %s.every(k => window.charts[k] instanceof Dygraph && window.charts[k].numRows() > 0)"
            % json.dumps(CHARTS), 30, "the page never showed its six charts (window.charts: Dygraph objects with rows)")
    rows = browser.execute_script("return Object.fromEntries(Object.entries(window.charts).map(([k, g]) => [k, g.numRows()]))")
    ok(f"six charts, each a Dygraph: {rows}")
    for key in CHARTS:
        for axis in ("x", "y"):
            labels = browser.execute_script(  # one script: a redraw replaces the labels
                "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", f"#chart-{key} .dygraph-axis-label-{axis}")
            labels = [t for t in labels if t.strip()]
            if len(labels) < 2:
                fail(f"chart {key}: {len(labels)} {axis}-axis tick labels ({labels})")
            bad = [t for t in labels if not is_number(t)]
            if bad:
                fail(f"chart {key}: {axis}-axis tick labels that are not numbers: {bad} (all: {labels})")
        xlabel = browser.execute_script(f"return window.charts[{json.dumps(key)}].getOption('xlabel')")
        ylabel = browser.execute_script(f"return window.charts[{json.dumps(key)}].getOption('ylabel')")
        if xlabel != "step" or not ylabel:
            fail(f"chart {key}: axis titles {xlabel!r} / {ylabel!r}")
    ok("every chart's axes are titled and ticked with numbers")


def check_rows(browser, ranks):
    wait_js(browser, f"return document.querySelectorAll('tr.actor').length >= {len(ACTORS)} && "
                     f"document.getElementById('job').textContent.includes('step') && "
                     f"document.querySelector('tr.rank[data-rank=\"{ranks - 1}\"]') !== null",
            20, "the page never showed every actor, the job line and a row per rank")
    # Read in one script: the page rebuilds the actor rows every second.
    rows, job_line, rank_rows = browser.execute_script(
        "const t = sel => [...document.querySelectorAll(sel)];"
        "return [t('tr.actor').map(r => r.innerText), document.getElementById('job').innerText,"
        "        t('table#ranks tr.rank').map(r => [r.dataset.rank, r.innerText])]")
    text = "\n".join(rows)
    missing = [w for w in ACTORS if w not in text]
    print(f"page: {len(rows)} actor rows; job line: {job_line!r}")
    if len(rows) != len(ACTORS) or missing or f"{ranks} rank(s)" not in job_line:
        fail(f"the page does not show the job: {len(rows)} rows, missing {missing}, job line {job_line!r}")
    ok("the page shows every actor and the job line")
    if [r for r, _ in rank_rows] != [str(r) for r in range(ranks)]:
        fail(f"the ranks table has rows for ranks {[r for r, _ in rank_rows]}, not 0..{ranks - 1}")
    ok(f"a row per rank: {[' '.join(t.split())[:60] for _, t in rank_rows]}")


def last_jsonl_loss(path):
    step, loss = None, None
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line being written
            if "loss" in r:
                step, loss = r["step"], r["loss"]
    return step, loss


def check_loss_against_jsonl(browser, ep, jsonl):
    """Paused, the loss chart's last point is the last loss the metrics sink wrote."""
    ep.post("/api/pause")
    deadline, seen = time.time() + 60, None
    while time.time() < deadline:
        status = ep.json("/api/status")
        if status["job"]["state"] == "paused":
            step, loss = last_jsonl_loss(jsonl) if os.path.exists(jsonl) else (None, None)
            chart = browser.execute_script(
                "const g = window.charts.loss, n = g.numRows(); return n ? [g.getValue(n - 1, 0), g.getValue(n - 1, 1)] : null")
            seen = (status["job"]["step"], step, chart)
            if chart and step is not None and step == status["job"]["step"] == chart[0]:
                if chart[1] is None or not math.isclose(chart[1], loss, rel_tol=1e-9, abs_tol=0):
                    fail(f"paused at step {step}: the loss chart's last value is {chart[1]!r}, metrics.jsonl says {loss!r}")
                ok(f"paused at step {step}: the loss chart ends at {chart[1]!r}, as metrics.jsonl does")
                return
        time.sleep(0.25)
    fail(f"paused, the job step, the last metrics.jsonl loss and the loss chart never agreed on a step "
         f"(status step, jsonl step, chart's last [step, loss]): {seen}")


def check_origin(browser, base):
    origin = urllib.parse.urlsplit(base)[:2]
    urls = set(browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"))
    network = 0
    for entry in browser.get_log("performance"):
        try:
            message = json.loads(entry["message"])["message"]
        except (KeyError, ValueError):
            continue
        if message.get("method") == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
            network += 1
    if network == 0:
        fail("Chrome's performance log shows no request at all: the network log is not working")
    away = sorted(u for u in urls if not u.startswith(("data:", "blob:", "about:")) and urllib.parse.urlsplit(u)[:2] != origin)
    if away:
        fail(f"the page made requests outside {base}: {away[:10]}")
    ok(f"all {len(urls)} distinct request URLs ({network} requests in Chrome's log) are on {base}")


def run_page_checks(ep, a, ranks, jsonl):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    paused = False
    try:
        browser.get(ep.url("/"))
        check_rows(browser, ranks)
        check_charts(browser)
        time.sleep(2.5)  # another history poll, drawn
        shot = os.path.join(tempfile.mkdtemp(prefix="troupe_page_shot_"), "inspect-page.png")
        browser.save_screenshot(shot)
        print(f"screenshot: {shot}")
        if a.screenshot:
            browser.save_screenshot(a.screenshot)
            print(f"screenshot: {a.screenshot}")
        if jsonl:
            paused = True
            check_loss_against_jsonl(browser, ep, jsonl)
        else:
            print("skipped: the loss chart against metrics.jsonl (no --dump)")
        errors = [e["message"] for e in browser.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
        if errors:
            fail(f"the page logged errors: {errors[:5]}")
        ok("no errors in the browser's console")
        check_origin(browser, ep.base)
    finally:
        if paused:
            try:
                ep.post("/api/resume")
                print("resumed the job")
            except OSError as e:
                print(f"could not resume the job: {e}")
        browser.quit()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--troupe", help="the troupe binary: runs a 2-rank CPU job and checks its page")
    where.add_argument("--base", help="a running endpoint's URL, e.g. http://127.0.0.1:8765 (the mock)")
    ap.add_argument("--dump", help="with --base: the job's dump folder, for the metrics.jsonl check")
    ap.add_argument("--token", help="with --base: the endpoint's token")
    ap.add_argument("--ranks", type=int, default=2, help="with --base: how many ranks the job has")
    ap.add_argument("--screenshot")
    ap.add_argument("--port", type=int, default=40000 + os.getpid() % 10000)
    a = ap.parse_args()
    job = None
    if a.troupe:
        dump = tempfile.mkdtemp(prefix="troupe_page_")
        token = secrets.token_hex(8)
        job = subprocess.Popen([a.troupe, "train", "--config", "configs/llama3_debug.toml", "--job.device", "cpu",
                                "--job.local_ranks", "2", "--training.steps", "100000", "--training.seq_len", "64",
                                "--training.local_batch_size", "2", "--metrics.log_freq", "1000",
                                "--validation.enable", "true", "--validation.freq", "5", "--validation.steps", "2",
                                "--job.dump_folder", dump, "--inspect.port", str(a.port), "--inspect.token", token],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        ep, ranks, jsonl = Endpoint(f"http://127.0.0.1:{a.port}", token), 2, os.path.join(dump, "metrics.jsonl")
    else:
        ep, ranks = Endpoint(a.base, a.token or ""), a.ranks
        jsonl = os.path.join(a.dump, "metrics.jsonl") if a.dump else None
    try:
        status = wait_for_step(ep, MIN_STEP, job, 240)
        ok(f"the endpoint is at step {status['job']['step']} ({status['job']['state']})")
        check_library(ep)
        run_page_checks(ep, a, ranks, jsonl)
        print("ok: the inspection page passes")
    finally:
        if job is not None:
            job.send_signal(signal.SIGINT)
            try:
                job.wait(60)
            except subprocess.TimeoutExpired:
                job.kill()


if __name__ == "__main__":
    main()
