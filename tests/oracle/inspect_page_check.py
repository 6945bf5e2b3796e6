#!/usr/bin/env python3
"""The inspection web page in headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): a CPU job with 2 ranks runs; the page must show its job line and one row per actor.
--screenshot PATH saves what the browser rendered (docs/inspect-page.png)."""
import argparse, json, os, signal, subprocess, sys, tempfile, time, urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--troupe", required=True)
    ap.add_argument("--screenshot")
    ap.add_argument("--port", type=int, default=40000 + os.getpid() % 10000)
    a = ap.parse_args()
    dump = tempfile.mkdtemp(prefix="troupe_page_")
    job = subprocess.Popen([a.troupe, "train", "--config", "configs/llama3_debug.toml", "--job.device", "cpu",
                            "--job.local_ranks", "2", "--training.steps", "100000", "--training.seq_len", "64",
                            "--training.local_batch_size", "2", "--metrics.log_freq", "1000",
                            "--job.dump_folder", dump, "--inspect.port", str(a.port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{a.port}"
    try:
        for _ in range(300):  # the endpoint, and a few steps done
            try:
                status = json.load(urllib.request.urlopen(base + "/api/status", timeout=2))
                if status["job"]["step"] >= 3:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            sys.exit("the job's endpoint never showed step 3")
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            browser.get(base + "/")
            rows = []
            for _ in range(100):
                rows = browser.find_elements(By.CSS_SELECTOR, "tr.actor")
                if len(rows) >= 7 and "step" in browser.find_element(By.ID, "job").text:
                    break
                time.sleep(0.2)
            text = "\n".join(r.text for r in rows)
            job_line = browser.find_element(By.ID, "job").text
            time.sleep(2.5)  # a plot or two
            if a.screenshot:
                browser.save_screenshot(a.screenshot)
        finally:
            browser.quit()
        want = ["stage[0]", "stage[1]", "data_loader[0]", "data_loader[1]", "coordinator", "metrics_sink", "node_supervisor"]
        missing = [w for w in want if w not in text]
        print(f"page: {len(rows)} actor rows; job line: {job_line!r}")
        if len(rows) != 7 or missing or "2 rank(s)" not in job_line:
            sys.exit(f"the page does not show the job: {len(rows)} rows, missing {missing}, job line {job_line!r}")
        print("ok: the page shows every actor")
    finally:
        job.send_signal(signal.SIGINT)
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            job.kill()


if __name__ == "__main__":
    main()
