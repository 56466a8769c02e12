"""Load test of the rating web app: raters × groups × images × 3 criteria, concurrently.

    python benchmarks/rating_load.py [--raters 15] [--groups 30] [--generators 3]

Builds a throw-away study (small disc masks, random images) in a temporary folder, starts
``ccis rating-serve`` on 127.0.0.1 (any free port) and lets every rater, each in a
thread of their own, open each group page and answer every scale with one POST per
answer, as the page does. Then the server is killed with SIGKILL (no clean shutdown)
and the study file is checked: every answer stored exactly once, with the value sent.
Prints the request counts, the wall time, and p50 / p95 / p99 of the server's answer
time (its ``Server-Timing`` header) and of the client's round trip. Exit status 1 when
an answer is missing, duplicated or wrong, or the run exceeded ``--limit`` seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pandas as pd

SCALE_RE = re.compile(r'<fieldset class="scale" data-image="([0-9a-f]{16})" data-criterion="(\w+)"')
CSRF_RE = re.compile(r'data-csrf="([^"]+)"')
NEXT_RE = re.compile(r'data-next="([^"]+)"')
SERVING_RE = re.compile(r"serving .* at (http://\S+?)/ ")
TIMING_RE = re.compile(r"app;dur=([0-9.]+)")


def expected_value(label: str, image: str, criterion: str) -> int:
    """The answer rater ``label`` gives (deterministic, so the database can be checked)."""
    digest = hashlib.sha256(f"{label}|{image}|{criterion}".encode()).digest()
    return 1 + digest[0] % 5


def _png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("cannot encode PNG")
    return buffer.tobytes()


def write_inputs(
    folder: Path,
    frames: Sequence[tuple[str, np.ndarray, str, Mapping[str, np.ndarray]]],
) -> tuple[Path, dict[str, Path]]:
    """Triplets and synthetic manifests as the workflow writes them, from ``frames``:
    (id, mask 0/255, caption, {generator: RGB image})."""
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rows, synthetic = [], {}
    for pair_id, mask, caption, images in frames:
        cv2.imwrite(str(folder / "masks" / f"{pair_id}.png"), mask)
        rows.append({"id": pair_id, "mask": f"masks/{pair_id}.png", "caption": caption})
        for name, image in images.items():
            data = _png(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            path = folder / name / "images" / f"synthetic-{name}-{pair_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            synthetic.setdefault(name, []).append({
                "id": f"synthetic-{name}-{pair_id}", "image": str(path.relative_to(folder)),
                "real_id": pair_id, "caption": caption, "generator": name,
                "image_sha256": hashlib.sha256(data).hexdigest(),
            })  # fmt: skip
    triplets = folder / "train.parquet"
    pd.DataFrame(rows).to_parquet(triplets)
    manifests = {}
    for name, part in synthetic.items():
        manifests[name] = folder / f"{name}.parquet"
        pd.DataFrame(part).to_parquet(manifests[name])
    return triplets, manifests


def disc_frames(count: int, generators: Sequence[str], size: tuple[int, int] = (96, 80)):
    """``count`` frames: one disc mask each and a random image per generator."""
    width, height = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for k in range(count):
        cx, cy, r = rng.integers(20, width - 20), rng.integers(20, height - 20), rng.integers(6, 18)
        mask = np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r, 255, 0).astype(np.uint8)
        images = {g: rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for g in generators}
        frames.append((f"pair-{k:03d}", mask, f"A polyp, number {k}.", images))
    return frames


def start_server(study: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``ccis rating-serve`` on a free port; the process and its base URL."""
    # The server's log goes to a file, not a pipe nobody drains (a full pipe blocks it).
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (open as long as the server runs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ccis.cli", "rating-serve", "--study", str(study), "--port", "0",
         *args],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the socket listens
    found = SERVING_RE.search(line)
    if not found:
        proc.kill()
        proc.wait()
        log.seek(0)
        raise RuntimeError(f"the server did not start: {line}{log.read()[-3000:]}")
    return proc, found.group(1)


@dataclass
class LoadResult:
    """What the raters sent and how long the server took."""

    sent: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)
    post_server_ms: list[float] = field(default_factory=list)
    post_client_ms: list[float] = field(default_factory=list)
    page_server_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Client:
    """One keep-alive connection; reconnects once when the server closed it."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        for attempt in (0, 1):
            try:
                start = time.perf_counter()
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                return response, data, (time.perf_counter() - start) * 1000
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # Answers are keyed (rater, image, criterion): a resent one is still one.
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _rater(base_url: str, label: str, link: str, result: LoadResult, lock: threading.Lock):
    client = _Client(base_url)
    prefix = urlsplit(link).path
    sent: dict[tuple[str, str], int] = {}
    path = f"{prefix}/g/1"
    try:
        while not path.endswith("/done"):
            response, page, _ = client.request("GET", path)
            if response.status != 200:
                raise RuntimeError(f"GET {path[len(prefix) :]}: HTTP {response.status}")
            text = page.decode()
            page_ms = float(TIMING_RE.search(response.getheader("server-timing")).group(1))
            csrf = CSRF_RE.search(text).group(1)
            headers = {"Content-Type": "application/json", "X-CSRF-Token": csrf}
            for image, criterion in SCALE_RE.findall(text):
                value = expected_value(label, image, criterion)
                body = f'{{"image": "{image}", "criterion": "{criterion}", "value": {value}}}'
                response, reply, client_ms = client.request(
                    "POST", f"{prefix}/api/rate", body.encode(), headers
                )
                if response.status != 200:
                    raise RuntimeError(f"POST answer: HTTP {response.status} {reply[:200]!r}")
                server_ms = float(TIMING_RE.search(response.getheader("server-timing")).group(1))
                sent[(image, criterion)] = value
                with lock:
                    result.post_server_ms.append(server_ms)
                    result.post_client_ms.append(client_ms)
            with lock:
                result.page_server_ms.append(page_ms)
            path = NEXT_RE.search(text).group(1)
    except Exception as err:  # reported with the rater's name, the run goes on
        with lock:
            result.errors.append(f"{label}: {err}")
    with lock:
        result.sent[label] = sent


def run_load(base_url: str, links: Mapping[str, str]) -> LoadResult:
    """Every rater (label → link) answers every scale of every group, all at once."""
    result, lock = LoadResult(), threading.Lock()
    threads = [
        threading.Thread(target=_rater, args=(base_url, label, link, result, lock))
        for label, link in links.items()
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - start
    return result


def stored_answers(study: Path) -> list[tuple[str, str, str, int]]:
    """(rater label, image, criterion, value) of every stored answer (a fresh connection)."""
    conn = sqlite3.connect(study)
    try:
        return conn.execute(
            "SELECT r.label, x.image_id, x.criterion, x.value FROM ratings x"
            " JOIN raters r ON r.id = x.rater_id"
        ).fetchall()
    finally:
        conn.close()


def check(study: Path, result: LoadResult) -> list[str]:
    """Problems: answers sent but not stored (or stored twice, or with another value)."""
    rows = stored_answers(study)
    problems = list(result.errors)
    keys = [(label, image, criterion) for label, image, criterion, _ in rows]
    if len(keys) != len(set(keys)):
        problems.append(f"{len(keys) - len(set(keys))} answer(s) stored more than once")
    stored = {(label, image, criterion): value for label, image, criterion, value in rows}
    expected = {
        (label, image, criterion): value
        for label, answers in result.sent.items()
        for (image, criterion), value in answers.items()
    }
    if stored != expected:
        missing = len(set(expected) - set(stored))
        extra = len(set(stored) - set(expected))
        wrong = sum(stored[k] != v for k, v in expected.items() if k in stored)
        problems.append(f"stored ≠ sent: {missing} missing, {extra} extra, {wrong} wrong values")
    return problems


def percentiles(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms (n={len(values)})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raters", type=int, default=15)
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--generators", type=int, default=3, help="images per group")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds allowed for the load")
    args = parser.parse_args(argv)

    from ccis.generator import REGISTRY
    from ccis.rating.invite import invite
    from ccis.rating.study import create_study

    generators = list(REGISTRY)[: args.generators]
    with tempfile.TemporaryDirectory(prefix="rating-load-") as tmp:
        root = Path(tmp)
        triplets, manifests = write_inputs(root / "inputs", disc_frames(args.groups, generators))
        study = create_study(
            triplets, manifests, root / "study" / "study.sqlite", groups=args.groups,
            repeats=args.repeats, seed=0,
        )  # fmt: skip
        server, base_url = start_server(study)
        try:
            links = {i.label: i.link for i in invite(study, raters=args.raters, base_url=base_url)}
            result = run_load(base_url, links)
        finally:
            os.kill(server.pid, signal.SIGKILL)  # no clean shutdown: nothing may be lost
            server.wait()
        problems = check(study, result)
        posts = len(result.post_server_ms)
        print(f"{args.raters} raters × {args.groups + args.repeats} groups × "
              f"{len(generators)} images × 3 criteria: {posts} answers (POSTs) and "
              f"{len(result.page_server_ms)} pages in {result.seconds:.2f} s "
              f"({posts / result.seconds:.0f} answers/s), server killed with SIGKILL")  # fmt: skip
        verdict = "every one exactly once, values as sent" if not problems else "PROBLEMS"
        print(f"stored after the kill: {len(stored_answers(study))} answers ({verdict})")
        print(f"server answer time (Server-Timing), POST: {percentiles(result.post_server_ms)}")
        print(f"client round trip, POST:                 {percentiles(result.post_client_ms)}")
        print(f"server time, group page GET:             {percentiles(result.page_server_ms)}")
        for problem in problems:
            print(f"PROBLEM: {problem}")
        if result.seconds > args.limit:
            print(f"PROBLEM: took {result.seconds:.1f} s, over the {args.limit:.0f} s limit")
            return 1
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
