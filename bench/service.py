"""The service on the 300-slice study: launch to ready, seconds per study at steady state, resident memory and
studies per minute, against one `spinelab predict` call on the same study.

The study and run folder are `bench/predict.py`'s (a 300-slice 512 px synthetic neck CT in JPEG Lossless; the
default recipe's architectures with random weights: timing does not depend on them). `spinelab serve RUN` is
started as its own process; the study is zipped once and POSTed as a client would. One warm-up job, then
``--repeats`` jobs one after the other (per-study seconds: POST to done, and the worker's own time), then
``--burst`` jobs submitted at once (studies per minute). Resident memory is the server's and its worker's RSS,
sampled every 0.2 s. ``--screenshot docs/serve_page.png`` also drives the page in headless Chromium.

    python bench/service.py [--repeats 3 --burst 4] [--screenshot docs/serve_page.png] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import REPO, machine_description, replace_block  # noqa: E402
from predict import make_run, make_study  # noqa: E402

WORK = REPO / "bench" / "_work" / "service"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MemorySampler(threading.Thread):
    """The peak resident memory (MB) of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak, self.last, self.stopped = psutil.Process(pid), 0.0, 0.0, threading.Event()

    def rss_mb(self) -> float:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs if p.is_running()) / 1e6
        except psutil.Error:
            return self.last

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.last = self.rss_mb()
            self.peak = max(self.peak, self.last)


def zip_study(study: Path) -> Path:
    archive = WORK / f"{study.name}.zip"
    if not archive.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # JPEG Lossless data does not deflate
            for f in sorted(study.iterdir()):
                zf.write(f, f"{study.name}/{f.name}")
    return archive


def submit(http: httpx.Client, archive: Path) -> str:
    with open(archive, "rb") as f:
        answer = http.post("/v1/jobs", files={"file": (archive.name, f, "application/zip")})
    answer.raise_for_status()
    return answer.json()["id"]


def wait(http: httpx.Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            if job["state"] == "failed":
                raise RuntimeError(f"job failed: {job['error']}")
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def worker_seconds(job: dict[str, Any]) -> float:
    started, finished = (dt.datetime.fromisoformat(job[k]) for k in ("started", "finished"))
    return (finished - started).total_seconds()


def predict_once(run: Path, study: Path) -> float:
    """Wall seconds of one `spinelab predict` process on the study (start-up included)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spinelab", "-q", "predict", "cervical", "--model", str(run), "-i",
                        str(study), "-o", out], check=True, capture_output=True)
        return time.perf_counter() - start


def screenshot(url: str, archive: Path, path: Path) -> None:
    """Upload ``archive`` on the page in headless Chromium and save the page with its result."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1280,1180"]:
            options.add_argument(flag)
        browser = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
        try:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
            browser.find_element(By.ID, "file").send_keys(str(archive))
            WebDriverWait(browser, 600).until(
                lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-result-shown") == "1")
            WebDriverWait(browser, 20).until(lambda b: b.execute_script(
                "const i = document.getElementById('figure'); return i.complete && i.naturalWidth > 0;"))
            path.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(path))
        finally:
            browser.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--burst", type=int, default=4)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    study, run = make_study(args.slices, args.size), make_run([])
    archive = zip_study(study)
    cli_s = predict_once(run, study)
    print(json.dumps({"predict_cli_s": cli_s}), flush=True)

    port, log = free_port(), WORK / "server.log"
    url = f"http://127.0.0.1:{port}"
    launched = time.perf_counter()
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "spinelab", "serve", str(run), "--port", str(port),
                                   "--jobs-dir", str(WORK / "jobs"), "--max-upload-mb", "4096"],
                                  stdout=out, stderr=subprocess.STDOUT)
    sampler = MemorySampler(server.pid)
    sampler.start()
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None:
                    raise RuntimeError(log.read_text()[-3000:])
                time.sleep(0.05)
            ready_s = time.perf_counter() - launched
            rss_ready = sampler.rss_mb()
            print(json.dumps({"ready_s": ready_s, "rss_ready_mb": rss_ready}), flush=True)
            wait(http, submit(http, archive))  # warm-up
            rows = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                job = wait(http, submit(http, archive))
                rows.append({"wall_s": time.perf_counter() - start, "worker_s": worker_seconds(job),
                             **{f"{k}_s": v for k, v in job["seconds"].items()}})
                print(json.dumps(rows[-1]), flush=True)
            start = time.perf_counter()
            ids = [submit(http, archive) for _ in range(args.burst)]
            for job_id in ids:
                wait(http, job_id)
            burst_s = time.perf_counter() - start
            print(json.dumps({"burst_s": burst_s}), flush=True)
            if args.screenshot:
                screenshot(url, archive, args.screenshot)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
        sampler.stopped.set()
    per_study = statistics.median(r["wall_s"] for r in rows)
    worker = statistics.median(r["worker_s"] for r in rows)
    predict_s = statistics.median(r["predict_s"] for r in rows)
    figure_s = statistics.median(r.get("figure_s", 0.0) for r in rows)
    lines = [
        "## The service (`bench/service.py`)",
        "",
        f"Machine: {machine_description()} (shared with other engineers' jobs while this ran; the figures are "
        f"upper bounds). `spinelab serve` on `{run.relative_to(REPO)}` (`bench/predict.py`'s default-recipe run, "
        f"random weights, CPU defaults) and its {args.slices}-slice {args.size} px JPEG Lossless study "
        f"(`{study.relative_to(REPO)}`), zipped ({archive.stat().st_size / 1e6:.0f} MB) "
        "and POSTed over loopback; each job also draws the per-study figure.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| launch to ready (`/health` 200: uvicorn up, worker spawned, model loaded) | {ready_s:.1f} s |",
        f"| per study at steady state, POST to done (upload, unzip, predict, figure; median of {args.repeats}) "
        f"| {per_study:.1f} s |",
        f"| of which in the worker | {worker:.1f} s |",
        f"| of which `predict_dataset` (read, check, predict, write the JSON and CSVs) | {predict_s:.1f} s |",
        f"| of which the per-study figure (`report/`) | {figure_s:.1f} s |",
        f"| studies per minute, {args.burst} submitted at once (one worker) | {60 * args.burst / burst_s:.1f} |",
        f"| resident memory at ready (server + worker) | {rss_ready:.0f} MB |",
        f"| peak resident memory while predicting | {sampler.peak:.0f} MB |",
        f"| one `spinelab predict` call on the same study (start-up included) | {cli_s:.1f} s |",
        "",
        f"Command: `python bench/service.py --repeats {args.repeats} --burst {args.burst}"
        f"{' --screenshot ' + str(args.screenshot) if args.screenshot else ''} --write`.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_block("service", text)


if __name__ == "__main__":
    main()
