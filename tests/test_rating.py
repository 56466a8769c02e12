"""The clinicians' rating study (paper Table 2): study creation, blinding, private links,
the web app under hostile input, a rater in headless Chromium, a concurrent load with a
killed server, Krippendorff's α and Table 2."""

from __future__ import annotations

import contextlib
import csv
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from conftest import REPO, snakemake

CHROMIUM = Path("/usr/bin/chromium")
GENERATORS = ("ccis", "controlnet", "unicontrolnet")
HOSTILE_CAPTION = (
    'A red polyp <script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> '
    '& "friends"'
)
HOSTILE_NAME = "<img src=x onerror=alert(1)>"

_spec = importlib.util.spec_from_file_location(
    "rating_load", REPO / "benchmarks" / "rating_load.py"
)
rating_load = importlib.util.module_from_spec(_spec)
sys.modules["rating_load"] = rating_load  # its dataclasses look their module up there
_spec.loader.exec_module(rating_load)


# --- fixtures -----------------------------------------------------------------------------


def phantom_frames(count: int) -> list:
    """Phantom frames as three "generators" would draw them for the same mask: the frame
    itself, a recoloured and blurred copy, and another frame (which misses the mask)."""
    from ccis.data.phantom import render_phantom

    frames = []
    for k in range(count):
        sample = render_phantom(2, 0, k, 256, 224)
        t = sample.truth
        caption = (
            HOSTILE_CAPTION if k == 0 else
            f"A {t.size} {t.colour} polyp, {t.shape}, with a {t.texture} surface and "
            f"{t.swelling} swelling."
        )  # fmt: skip
        hsv = cv2.cvtColor(sample.image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + 8) % 180
        shifted = cv2.GaussianBlur(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), (5, 5), 0)
        other = render_phantom(2, 0, 100 + k, 256, 224).image
        images = {"ccis": sample.image, "controlnet": shifted, "unicontrolnet": other}
        frames.append((f"phantom-{k:03d}", sample.mask, caption, images))
    return frames


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rating-inputs")
    small = rating_load.write_inputs(root / "small", phantom_frames(5))
    large = rating_load.write_inputs(root / "large", rating_load.disc_frames(32, GENERATORS))
    return {"small": small, "large": large}


@pytest.fixture(scope="module")
def small_study(inputs, tmp_path_factory) -> Path:
    """5 groups (every mask, one with a hostile caption) + 1 repeated, 3 generators."""
    from ccis.rating.study import create_study

    triplets, manifests = inputs["small"]
    out = tmp_path_factory.mktemp("small-study") / "study.sqlite"
    return create_study(triplets, manifests, out, groups=5, repeats=1, seed=3)


@pytest.fixture
def fresh_study(inputs, tmp_path) -> Path:
    """A study like small_study, of this test's own."""
    from ccis.rating.study import create_study

    triplets, manifests = inputs["small"]
    return create_study(triplets, manifests, tmp_path / "fresh" / "study.sqlite", groups=5,
                        repeats=1, seed=3)  # fmt: skip


@pytest.fixture(scope="module")
def server(small_study):
    proc, base = rating_load.start_server(small_study)
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def links(small_study, server) -> dict[str, str]:
    from ccis.rating.invite import invite

    made = invite(small_study, names=["alice", "bob", "mallory", HOSTILE_NAME], admin=True,
                  base_url=server)  # fmt: skip
    return {i.label if i.role == "rater" else "admin": i.link for i in made}


def request(base: str, method: str, path: str, body: bytes | None = None, headers=None):
    """(status, headers with lower-case names, body) of one request to the test server."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def stored(study: Path, label: str | None = None) -> dict[tuple[str, str], int]:
    """Answers in the study file (of one rater), read through a fresh connection."""
    rows = rating_load.stored_answers(study)
    return {(i, c): v for who, i, c, v in rows if label is None or who == label}


# --- Krippendorff's α ------------------------------------------------------------------------


def test_krippendorff_alpha_matches_the_published_example():
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", §C: 4 coders,
    12 units, values 1–5, with missing values: α 0.743 nominal, 0.815 ordinal, 0.849
    interval."""
    from ccis.rating.agreement import krippendorff_alpha

    n = np.nan
    data = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ])  # fmt: skip
    assert round(krippendorff_alpha(data, "nominal"), 3) == 0.743
    assert round(krippendorff_alpha(data, "ordinal"), 3) == 0.815
    assert round(krippendorff_alpha(data, "interval"), 3) == 0.849


def test_krippendorff_alpha_hand_worked():
    """Two raters; units (1,1) (2,2) (5,5) (1,5), and (4, –) which has no pair and drops.
    Coincidences o11 = o22 = o55 = 2, o15 = o51 = 1; totals n1 = 3, n2 = 2, n5 = 3, n = 8.
    Ordinal: δ²(1,2) = (3+2 − 5/2)² = 6.25, δ²(2,5) = 6.25, δ²(1,5) = (8 − 3)² = 25;
    observed 2·25 = 50; Σ n_c n_k δ² = 2(6·6.25 + 6·6.25 + 9·25) = 600; α = 1 − 7·50/600
    = 5/12. Interval: δ² = 1, 9, 16; α = 1 − 7·32/408 = 184/408. Nominal: observed 2,
    Σ n_c n_k over c ≠ k = 64 − 22 = 42; α = 1 − 7·2/42 = 2/3."""
    from ccis.rating.agreement import krippendorff_alpha

    data = np.array([[1, 2, 5, 1, 4], [1, 2, 5, 5, np.nan]])
    assert krippendorff_alpha(data, "ordinal") == pytest.approx(5 / 12)
    assert krippendorff_alpha(data, "interval") == pytest.approx(184 / 408)
    assert krippendorff_alpha(data, "nominal") == pytest.approx(2 / 3)
    assert krippendorff_alpha(np.array([[3, 3], [3, 3]])) != krippendorff_alpha(data)  # NaN
    assert np.isnan(krippendorff_alpha(np.array([[3, 3], [3, 3]])))
    assert krippendorff_alpha(np.array([[1, 2, 3], [1, 2, 3]])) == 1.0
    with pytest.raises(ValueError, match="unknown level of measurement 'ratio'"):
        krippendorff_alpha(data, "ratio")


# --- the study ---------------------------------------------------------------------------------


def test_blinding_orders_are_stable_and_differ_between_raters():
    from ccis.rating.blinding import MIN_GAP, group_sequence, image_sequence

    groups = [(g, None) for g in range(1, 31)] + [(31, 4), (32, 17), (33, 29)]
    first = group_sequence(7, 1, groups)
    assert first == group_sequence(7, 1, groups) and sorted(first) == list(range(1, 34))
    orders = [group_sequence(7, r, groups) for r in range(1, 16)]
    assert len({tuple(order) for order in orders}) == 15
    gaps = [o.index(repeat) - o.index(original) for o in orders
            for repeat, original in ((31, 4), (32, 17), (33, 29))]  # fmt: skip
    assert min(gaps) >= 1 and np.mean(gaps) > MIN_GAP  # after the original, not right after
    ids = ["a1", "b2", "c3"]
    orders = {tuple(image_sequence(7, r, g, ids)) for r in range(1, 16) for g in range(1, 31)}
    assert len(orders) == 6  # all 3! orders occur across raters and groups
    assert image_sequence(7, 3, 5, ids) == image_sequence(7, 3, 5, list(reversed(ids)))


def test_study_is_deterministic_blind_and_self_contained(inputs, small_study, tmp_path):
    from ccis.rating.store import Store
    from ccis.rating.study import create_study

    triplets, manifests = inputs["large"]
    a = create_study(triplets, manifests, tmp_path / "a" / "study.sqlite", groups=30, repeats=3,
                     seed=11, spec=tmp_path / "a.json")  # fmt: skip
    b = create_study(triplets, manifests, tmp_path / "b" / "study.sqlite", groups=30, repeats=3,
                     seed=11)  # fmt: skip
    c = create_study(triplets, manifests, tmp_path / "c" / "study.sqlite", groups=30, seed=12)
    sa, sb, sc = Store(a), Store(b), Store(c)
    chosen = [g.real_id for g in sa.groups.values()]
    assert (
        chosen == [g.real_id for g in sb.groups.values()] != [g.real_id for g in sc.groups.values()]
    )
    assert len(sa.groups) == 33 and len(sa.images) == 99 and sa.total == 297
    repeats = [g for g in sa.groups.values() if g.repeat_of]
    assert len(repeats) == 3
    for g in repeats:  # same mask, caption and pictures; new ids, so nothing gives it away
        original = sa.groups[g.repeat_of]
        assert (g.real_id, g.caption) == (original.real_id, original.caption)
        assert {sa.media[i.id][0] for i in g.images} == {sa.media[i.id][0] for i in original.images}
        assert not {i.id for i in g.images} & {i.id for i in original.images}
    # Media are copied, named by content; no id, file name or path names a generator.
    for media_id, (path, _) in sa.media.items():
        assert re.fullmatch(r"[0-9a-f]{16}", media_id)
        assert re.fullmatch(r"media/[0-9a-f]{64}\.png", path) and (a.parent / path).is_file()
    spec = json.loads((tmp_path / "a.json").read_text())
    assert [g["real_id"] for g in spec["groups"]] == chosen
    assert set(spec["groups"][0]["images"]) == set(GENERATORS)
    # The small study shows its hostile caption as stored (escaping is the page's job).
    assert HOSTILE_CAPTION in {g.caption for g in Store(small_study).groups.values()}


def test_rerun_keeps_ratings_and_a_different_study_never_replaces_them(inputs, tmp_path):
    from ccis.rating.invite import invite
    from ccis.rating.store import Store
    from ccis.rating.study import create_study

    triplets, manifests = inputs["large"]
    out = tmp_path / "study.sqlite"
    create_study(triplets, manifests, out, groups=4, seed=1)
    store = Store(out)
    invite(out, raters=1)
    image = next(iter(store.images))
    store.save(1, image, "mask", 4)
    store.conn().close()
    create_study(triplets, manifests, out, groups=4, seed=1)  # unchanged: kept
    assert stored(out) == {(image, "mask"): 4}
    with pytest.raises(ValueError, match=r"holds another study .* with 1 rater\(s\) and 1 "
                                         r"rating\(s\); it is not replaced"):  # fmt: skip
        create_study(triplets, manifests, out, groups=5, seed=1)
    assert stored(out) == {(image, "mask"): 4}
    create_study(triplets, manifests, out, groups=5, seed=1, replace=True)
    archived = list((tmp_path / "archive").glob("*/study.sqlite"))
    assert len(archived) == 1 and stored(archived[0]) == {(image, "mask"): 4}
    assert stored(out) == {} and len(Store(out).groups) == 5


def test_study_input_errors_name_the_file(inputs, tmp_path):
    import pandas as pd

    from ccis.rating.study import create_study

    triplets, manifests = inputs["large"]
    out = tmp_path / "s.sqlite"
    with pytest.raises(ValueError, match=r"unknown generator\(s\) \['stable'\]"):
        create_study(triplets, {"stable": manifests["ccis"]}, out)
    with pytest.raises(ValueError, match="40 groups asked for, but only 32 training masks"):
        create_study(triplets, manifests, out, groups=40)
    with pytest.raises(ValueError, match=r"repeats must be between 0 and groups \(3\)"):
        create_study(triplets, manifests, out, groups=3, repeats=4)
    stale = tmp_path / "stale.parquet"
    frame = pd.read_parquet(manifests["controlnet"])
    frame.loc[3, "caption"] = "another caption"
    frame.to_parquet(stale)
    with pytest.raises(ValueError, match=rf"{stale}: 1 image\(s\) were drawn for other captions"):
        create_study(triplets, {**manifests, "controlnet": stale}, out)
    wrong = tmp_path / "wrong.parquet"
    frame = pd.read_parquet(manifests["ccis"])
    frame.to_parquet(wrong)
    with pytest.raises(ValueError, match=rf"{wrong}: given as controlnet's images but made by"):
        create_study(triplets, {"controlnet": wrong}, out)
    # An image changed after its manifest was written, and one that is not a PNG.
    folder = tmp_path / "copy"
    shutil.copytree(triplets.parent, folder)
    image = folder / pd.read_parquet(folder / "ccis.parquet")["image"].iloc[0]
    image.write_bytes(b"GIF89a not a png")
    with pytest.raises(ValueError, match=r"is not a PNG file|changed since its manifest"):
        create_study(folder / "train.parquet", {"ccis": folder / "ccis.parquet"}, out,
                     groups=32)  # fmt: skip
    assert not out.exists()


def test_invite_stores_only_token_hashes(fresh_study, tmp_path):
    from ccis.rating.invite import invite
    from ccis.rating.store import Store, token_hash

    copy = fresh_study
    made = invite(copy, raters=2, admin=True, out=tmp_path / "links.csv")
    more = invite(copy, raters=1)
    assert [i.label for i in made + more] == ["rater-01", "rater-02", "admin-1", "rater-03"]
    tokens = [i.link.rsplit("/", 1)[1] for i in made + more]
    assert len(set(tokens)) == 4 and all(len(t) == 43 for t in tokens)
    data = copy.read_bytes() + b"".join(
        p.read_bytes() for p in copy.parent.glob("study.sqlite-*")
    )  # the WAL too
    for token in tokens:
        assert token.encode() not in data and token_hash(token).encode() in data
    assert Store(copy).rater_by_token(tokens[0]).label == "rater-01"
    assert Store(copy).is_admin(tokens[2]) and not Store(copy).is_admin(tokens[0])
    assert (tmp_path / "links.csv").stat().st_mode & 0o777 == 0o600
    rows = list(csv.DictReader((tmp_path / "links.csv").open()))
    assert [r["role"] for r in rows] == ["rater", "rater", "admin"]
    with pytest.raises(ValueError, match=r"rater name\(s\) already used: \['rater-01'\]"):
        invite(copy, names=["rater-01"])


# --- the web app under hostile input -----------------------------------------------------------


def test_no_page_or_api_answers_without_a_valid_token(server, links, small_study):
    from ccis.rating.store import Store

    media = next(iter(Store(small_study).media))
    fake = "x" * 43
    alice = urlsplit(links["alice"]).path
    for method, path in [("GET", "/"), ("GET", f"/r/{fake}"), ("GET", f"/r/{fake}/g/1"),
                         ("GET", f"/r/{fake}/done"), ("GET", f"/r/{fake}/media/{media}"),
                         ("GET", f"/r/{fake}/api/answers"), ("POST", f"/r/{fake}/api/rate"),
                         ("GET", "/r/short/g/1"), ("GET", f"/admin/{fake}"),
                         ("GET", f"/admin/{alice.rsplit('/', 1)[1]}"),  # a rater is no admin
                         ("GET", f"/admin/{fake}/api/progress")]:  # fmt: skip
        status, headers, body = request(server, method, path, b"{}" if method == "POST" else None,
                                        {"Content-Type": "application/json"})  # fmt: skip
        assert status == 403, (method, path, status)
        assert b"not valid" in body or b"by invitation" in body
        assert media.encode() not in body
    status, headers, _ = request(server, "GET", f"{alice}/media/{media}")
    assert status == 200 and headers["content-type"] == "image/png"
    status, headers, body = request(server, "GET", f"{alice}/g/1")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer" and headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store" and "app;dur=" in headers["server-timing"]


def test_hostile_requests_are_refused_and_change_nothing(server, links, small_study):
    prefix = urlsplit(links["mallory"]).path
    page = request(server, "GET", f"{prefix}/g/1")[2].decode()
    csrf = re.search(r'data-csrf="([^"]+)"', page).group(1)
    image = re.search(r'data-image="([0-9a-f]{16})"', page).group(1)
    bob_page = request(server, "GET", urlsplit(links["bob"]).path + "/g/1")[2].decode()
    bob_csrf = re.search(r'data-csrf="([^"]+)"', bob_page).group(1)
    host = urlsplit(server).netloc
    ok = {"Content-Type": "application/json", "X-CSRF-Token": csrf}
    before = stored(small_study)

    def rating(**fields) -> bytes:
        return json.dumps({"image": image, "criterion": "fidelity", "value": 3, **fields}).encode()

    attempts = [
        # (what, body, headers, status, message fragment)
        ("cross-origin POST (Origin)", rating(), {**ok, "Origin": "http://evil.example"}, 403,
         "another origin"),
        ("cross-site POST (Sec-Fetch-Site)", rating(), {**ok, "Sec-Fetch-Site": "cross-site"},
         403, "Cross-site"),
        ("same-site POST (Sec-Fetch-Site)", rating(), {**ok, "Sec-Fetch-Site": "same-site"},
         403, "Cross-site"),
        ("sandboxed frame (Origin: null)", rating(), {**ok, "Origin": "null"}, 403,
         "another origin"),
        ("HTML form post", b"image=x&value=3",
         {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ("text/plain post", rating(), {"Content-Type": "text/plain", "X-CSRF-Token": csrf},
         415, "application/json"),
        ("no CSRF header", rating(), {"Content-Type": "application/json"}, 403, "X-CSRF-Token"),
        ("another rater's CSRF token", rating(), {**ok, "X-CSRF-Token": bob_csrf}, 403,
         "X-CSRF-Token"),
        ("another rater's id in the body", rating(rater=1), ok, 400, "Unknown field(s) 'rater'"),
        ("another rater's id (rater_id)", rating(rater_id=2), ok, 400, "the rater is the one"),
        ("value 0", rating(value=0), ok, 422, "from 1 to 5, got 0"),
        ("value 6", rating(value=6), ok, 422, "from 1 to 5, got 6"),
        ("value -1", rating(value=-1), ok, 422, "got -1"),
        ("value '3' (a string)", rating(value="3"), ok, 422, 'got \\"3\\"'),
        ("value 'abc'", rating(value="abc"), ok, 422, "whole number"),
        ("value 3.5", rating(value=3.5), ok, 422, "got 3.5"),
        ("value 3.0", rating(value=3.0), ok, 422, "got 3.0"),
        ("value true", rating(value=True), ok, 422, "got true"),
        ("value null", rating(value=None), ok, 422, "got null"),
        ("value [3]", rating(value=[3]), ok, 422, "whole number"),
        ("value NaN", rating().replace(b"3}", b"NaN}"), ok, 400, "NaN is not a number"),
        ("value given twice", rating()[:-1] + b', "value": 9}', ok, 400, "given twice: value"),
        ("unknown image id", rating(image="0123456789abcdef"), ok, 404, "Unknown image id"),
        ("path as image id", rating(image="../study.sqlite"), ok, 404, "Unknown image id"),
        ("image id not a string", rating(image=5), ok, 422, "image must be"),
        ("unknown criterion", rating(criterion="beauty"), ok, 422, "Unknown criterion 'beauty'"),
        ("missing field", json.dumps({"image": image, "value": 3}).encode(), ok, 400,
         "Missing field(s): criterion"),
        ("malformed JSON", b'{"image": ', ok, 400, "not valid JSON"),
        ("empty body", b"", ok, 400, "not valid JSON"),
        ("JSON array", b"[1, 2, 3]", ok, 400, "Expected a JSON object"),
        ("not UTF-8", b'{"image": "\xff"}', ok, 400, "not valid JSON"),
        ("oversized body (10 kB)", rating(pad="x" * 10_000), ok, 413, "Content Too Large"),
        ("wrong Host (DNS rebinding)", rating(), {**ok, "Host": "evil.example"}, 400,
         "Invalid host header"),
    ]  # fmt: skip
    for what, body, headers, status, fragment in attempts:
        got, _, reply = request(server, "POST", f"{prefix}/api/rate", body, headers)
        assert got == status, (what, got, reply)
        assert fragment in reply.decode(), (what, reply)
    # A declared huge body is refused without waiting for it.
    with socket.create_connection((urlsplit(server).hostname, urlsplit(server).port), 10) as s:
        s.sendall(f"POST {prefix}/api/rate HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                  f"application/json\r\nX-CSRF-Token: {csrf}\r\nContent-Length: 100000000\r\n"
                  "\r\n".encode())  # fmt: skip
        assert s.recv(200).startswith(b"HTTP/1.1 413")
    assert request(server, "GET", f"{prefix}/api/rate")[0] == 405
    media = request(server, "GET", f"{prefix}/media/..%2f..%2fstudy.sqlite")
    assert media[0] == 404 and b"SQLite" not in media[2]
    assert stored(small_study) == before and stored(small_study, "mallory") == {}

    # The same request done right is stored, exactly once, and a change replaces it.
    origin = {**ok, "Origin": server, "Sec-Fetch-Site": "same-origin"}
    assert request(server, "POST", f"{prefix}/api/rate", rating(), origin)[0] == 200
    assert request(server, "POST", f"{prefix}/api/rate", rating(), ok)[0] == 200
    status, _, reply = request(server, "POST", f"{prefix}/api/rate", rating(value=5), ok)
    assert status == 200 and json.loads(reply)["answered"] == 1
    assert stored(small_study, "mallory") == {(image, "fidelity"): 5}


def test_captions_and_names_render_as_text(server, links, small_study):
    from ccis.rating.blinding import group_sequence
    from ccis.rating.store import Store

    store = Store(small_study)
    rater = store.rater_by_token(links["alice"].rsplit("/", 1)[1])
    order = group_sequence(
        store.seed, rater.id, [(g.id, g.repeat_of) for g in store.groups.values()]
    )
    position = 1 + next(
        k for k, g in enumerate(order) if store.groups[g].caption == HOSTILE_CAPTION
    )
    page = request(server, "GET", urlsplit(links["alice"]).path + f"/g/{position}")[2].decode()
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;&lt;img src=x onerror=" in page
    assert "<script>window.pwned" not in page and "<img src=x" not in page
    assert page.count("<script") == 1  # the page's own script file, nothing inline
    admin = request(server, "GET", urlsplit(links["admin"]).path)[2].decode()
    assert "&lt;img src=x onerror=alert(1)&gt;" in admin and "<img src=x" not in admin


# --- a rater in headless Chromium ----------------------------------------------------------------


class DevTools:
    """Headless Chromium over the DevTools protocol on a pipe (fd 3 in, fd 4 out): no
    WebSocket library and no driver download."""

    KEYS = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}

    def __init__(self, profile: Path) -> None:
        to_child, from_us = os.pipe()
        to_us, from_child = os.pipe()

        def wire() -> None:  # in the child, before exec
            os.dup2(to_child, 100)
            os.dup2(from_child, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--disable-extensions", "--mute-audio",
                 "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen([str(CHROMIUM), *flags], preexec_fn=wire, close_fds=False,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_child)
        os.close(from_child)
        self.writer = os.fdopen(from_us, "wb", buffering=0)
        self.reader = os.fdopen(to_us, "rb", buffering=0)
        self.replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self.cond = threading.Condition()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")

    def _read(self) -> None:
        buffer = b""
        while chunk := self.reader.read(65536):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self.cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self.replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self.cond.notify_all()

    def call(self, method: str, session: str | None = None, **params) -> dict:
        with self.cond:
            self.next_id += 1
            ident = self.next_id
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.writer.write(json.dumps(message).encode() + b"\0")
        with self.cond:
            if not self.cond.wait_for(lambda: ident in self.replies, timeout=30):
                raise TimeoutError(f"Chromium did not answer {method}")
            reply = self.replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def send(self, method: str, **params) -> dict:
        """A command to the page."""
        return self.call(method, self.session, **params)

    def wait_event(self, method: str, since: int, timeout: float = 30) -> dict:
        def found():
            return next((e for e in self.events[since:] if e["method"] == method), None)

        with self.cond:
            if not self.cond.wait_for(found, timeout=timeout):
                raise TimeoutError(f"no {method} event")
            return found()

    def load(self, action, *args, **params) -> None:
        """Do ``action`` (navigate, reload, a key) and wait for the next page load."""
        mark = len(self.events)
        action(*args, **params)
        self.wait_event("Page.loadEventFired", mark)

    def goto(self, url: str) -> int:
        """Open ``url``; the HTTP status of the document finally shown."""
        mark = len(self.events)
        self.load(self.send, "Page.navigate", url=url)
        documents = [e for e in self.events[mark:] if e["method"] == "Network.responseReceived"
                     and e["params"]["type"] == "Document"]  # fmt: skip
        return documents[-1]["params"]["response"]["status"]

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_js(self, expression: str, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > end:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.02)

    def key(self, key: str) -> None:
        """Press and release ``key`` (a digit, a letter or an arrow) as a keyboard does."""
        if key in self.KEYS:
            params = {"key": key, "code": key, "windowsVirtualKeyCode": self.KEYS[key]}
        else:
            code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"
            params = {"key": key, "code": code, "text": key,
                      "windowsVirtualKeyCode": ord(key.upper())}  # fmt: skip
        self.send("Input.dispatchKeyEvent", type="keyDown", **params)
        self.send("Input.dispatchKeyEvent", type="keyUp", **{k: v for k, v in params.items()
                                                             if k != "text"})  # fmt: skip

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)  # fmt: skip

    def screenshot(self, path: Path) -> Path:
        import base64

        path.write_bytes(
            base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        )
        return path

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


SCALES_JS = "[...document.querySelectorAll('fieldset.scale')]"
READY_JS = "window.ratingState && window.ratingState.ready === true"
# How many rows the image cards take (1: side by side).
ROWS_JS = "new Set([...document.querySelectorAll('.candidate')].map(e => e.offsetTop)).size"


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is not installed (apt chromium)")
def test_a_rater_in_headless_chromium(server, links, small_study, tmp_path):
    browser = DevTools(tmp_path / "profile")
    try:
        _rater_flow(browser, server, links, small_study, tmp_path)
    finally:
        browser.close()


def _rate_page_with_keys(browser: DevTools, values_for) -> dict[tuple[str, str], int]:
    """Rate every scale of the open group with the number keys; the answers given."""
    browser.wait_js(READY_JS)
    scales = browser.js(f"{SCALES_JS}.map(f => [f.dataset.image, f.dataset.criterion])")
    given = {}
    saved_before = browser.js("window.ratingState.saved")
    for k, (image, criterion) in enumerate(scales):
        value = values_for(k)
        browser.key(str(value))
        given[(image, criterion)] = value
    browser.wait_js(f"window.ratingState.pending === 0 && "
                    f"window.ratingState.saved === {saved_before + len(scales)}")  # fmt: skip
    assert browser.js("window.ratingState.failed") == 0
    return given


def _rater_flow(browser: DevTools, server: str, links: dict, study: Path, tmp_path: Path):
    browser.viewport(1280, 860)
    assert browser.goto(links["alice"]) == 200
    assert browser.js("location.pathname").endswith("/g/1")  # resumed at the first group
    browser.wait_js(READY_JS)
    assert browser.js("document.querySelectorAll('fieldset.scale input:checked').length") == 0
    assert browser.js("document.querySelector('fieldset.scale.active') === "
                      f"{SCALES_JS}[0]")  # fmt: skip
    # Laptop: the three images side by side, nothing wider than the window.
    assert browser.js(ROWS_JS) == 1
    assert browser.js("document.documentElement.scrollWidth <= innerWidth")

    # Group 1 with the keyboard: 4 scales, a screenshot, the other 5.
    scales = browser.js(f"{SCALES_JS}.map(f => [f.dataset.image, f.dataset.criterion])")
    values = [1 + (2 * k + 1) % 5 for k in range(len(scales))]
    for value in values[:4]:
        browser.key(str(value))
    browser.wait_js("window.ratingState.pending === 0 && window.ratingState.saved === 4")
    browser.key("o")  # the mask outline over the images
    assert browser.js("getComputedStyle(document.querySelector('img.outline')).display") == "block"
    shot = browser.screenshot(tmp_path / "rating.png")
    for value in values[4:]:
        browser.key(str(value))
    browser.wait_js(
        f"window.ratingState.pending === 0 && window.ratingState.saved === {len(values)}"
    )
    assert stored(study, "alice") == {tuple(s): v for s, v in zip(scales, values, strict=True)}
    assert browser.js("document.getElementById('progress').value") == len(values)

    # Reload: the answers are there, checked, and the progress bar says so.
    browser.load(browser.send, "Page.reload")
    browser.wait_js(READY_JS)
    checked = browser.js(f"{SCALES_JS}.map(f => Number(f.querySelector('input:checked').value))")
    assert checked == values
    assert browser.js("Number(document.getElementById('answered').textContent)") == len(values)

    # The other groups (one has a hostile caption, one repeats a group): rate, then "n".
    total = browser.js("Number(document.getElementById('progress').max)")
    given = {tuple(s): v for s, v in zip(scales, values, strict=True)}
    browser.load(browser.key, "n")
    while browser.js("location.pathname").split("/")[-2] == "g":
        caption = browser.js("document.getElementById('caption').textContent")
        if "<script>" in caption:  # shown as text, never run
            assert caption == HOSTILE_CAPTION and browser.js("typeof window.pwned") == "undefined"
        given |= _rate_page_with_keys(browser, lambda k: 1 + k % 5)
        browser.load(browser.key, "n")
    assert browser.js("location.pathname").endswith("/done")
    assert browser.js("document.getElementById('complete').textContent").startswith(
        f"All {total} answers are saved"
    )
    assert len(given) == total == 6 * 9 and stored(study, "alice") == given

    # A tablet in portrait: one or two columns, still no sideways scrolling.
    browser.viewport(820, 1180, mobile=True)
    browser.goto(links["alice"] + "/g/2")
    browser.wait_js(READY_JS)
    assert browser.js("document.documentElement.scrollWidth <= innerWidth")
    assert browser.js(ROWS_JS) in (2, 3)  # two images a row, or one

    # A second rater sees none of the first one's answers.
    browser.viewport(1280, 860)
    assert browser.goto(links["bob"]) == 200
    browser.wait_js(READY_JS)
    assert browser.js("document.querySelectorAll('fieldset.scale input:checked').length") == 0
    assert browser.js("document.getElementById('progress').value") == 0
    mine = browser.js("fetch(location.pathname.replace(/g\\/\\d+$/, 'api/answers'))"
                      ".then(r => r.json())")  # fmt: skip
    assert mine["rater"] == "bob" and mine["answered"] == 0 and mine["answers"] == []

    # A bad token: 403 and a message, nothing else.
    assert browser.goto(f"{server}/r/{'A' * 43}/g/1") == 403
    assert "not valid" in browser.js("document.body.textContent")
    # The admin view: progress per rater, names as text.
    assert browser.goto(links["admin"]) == 200
    rows = browser.js("[...document.querySelectorAll('tbody tr')].map(r => r.cells[0].textContent"
                      " + ' ' + r.cells[1].textContent)")  # fmt: skip
    assert f"alice {total} / {total}" in rows and "bob 0 / 54" in rows
    assert f"{HOSTILE_NAME} 0 / 54" in rows
    assert browser.js("document.querySelector('img') === null")

    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 860) and len(image.getcolors(1 << 20) or []) > 1000
    if os.environ.get("CCIS_RATING_SCREENSHOT"):  # docs/rating.png: the whole first page
        browser.goto(links["alice"] + "/g/1")
        browser.wait_js(READY_JS)
        browser.js("document.querySelectorAll('fieldset.scale')[4].click(); scrollTo(0, 0)")
        height = browser.js("document.documentElement.scrollHeight")
        browser.viewport(1280, height)
        browser.screenshot(Path(os.environ["CCIS_RATING_SCREENSHOT"]))


# --- load: 15 raters × 30 groups × 3 criteria at once, then SIGKILL --------------------------------


def test_load_of_15_raters_is_stored_exactly_once_after_a_kill(inputs, tmp_path, capsys):
    from ccis.rating.invite import invite
    from ccis.rating.study import create_study

    triplets, manifests = inputs["large"]
    study = create_study(triplets, manifests, tmp_path / "study.sqlite", groups=30, seed=5)
    proc, base = rating_load.start_server(study)
    try:
        links = {i.label: i.link for i in invite(study, raters=15, base_url=base)}
        result = rating_load.run_load(base, links)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown: only what was committed survives
        proc.wait()
    assert result.errors == []
    answers = 15 * 30 * len(GENERATORS) * 3
    assert len(result.post_server_ms) == answers == 4050
    assert rating_load.check(study, result) == []  # every answer once, with its value
    assert len(rating_load.stored_answers(study)) == answers
    assert result.seconds < 60, f"the load took {result.seconds:.1f} s"
    with capsys.disabled():
        print(f"\nload: {answers} answers from 15 raters in {result.seconds:.1f} s; server "
              f"POST time {rating_load.percentiles(result.post_server_ms)}")  # fmt: skip


# --- Table 2 -------------------------------------------------------------------------------------------


def test_table2_from_ratings_and_in_the_report(fresh_study, tmp_path, capsys):
    import pandas as pd

    from ccis.cli import main
    from ccis.rating.invite import invite
    from ccis.rating.store import Store
    from ccis.report.html import build_report, parse_markdown

    study = fresh_study
    invite(study, names=["r1", "r2", "r3|x"])
    store = Store(study)
    base = {"ccis": 4, "controlnet": 3, "unicontrolnet": 2}
    expected = {}
    for rater in (1, 2, 3):
        for image in store.images.values():
            group = store.groups[image.group_id]
            original = group.repeat_of or group.id
            for k, criterion in enumerate(("fidelity", "mask", "text")):
                # Every rater agrees (α = 1); the value varies with the group and criterion.
                value = base[image.generator] + (original + k) % 2
                store.save(rater, image.id, criterion, value)
                if group.repeat_of is None:
                    expected.setdefault((image.generator, criterion), []).append(value)

    out = tmp_path / "report"
    code = main(["rating-table", "--study", str(study), "--out-csv",
                 str(out / "table2_user_study.csv"), "--out-md",
                 str(out / "table2_user_study.md"), "--paper"])  # fmt: skip
    assert code == 0
    frame = pd.read_csv(out / "table2_user_study.csv")
    assert list(frame["generator"]) == list(GENERATORS)
    assert list(frame["method"]) == ["CCIS-Diff (ours)", "ControlNet", "Uni-ControlNet"]
    for _, row in frame.iterrows():
        for criterion in ("fidelity", "mask", "text"):
            values = np.array(expected[(row["generator"], criterion)], float)
            assert row[f"{criterion}_mean"] == pytest.approx(values.mean(), rel=1e-5)
            assert row[f"{criterion}_sd"] == pytest.approx(values.std(ddof=1), rel=1e-5)
            assert row[f"{criterion}_n"] == 15  # 5 groups × 3 raters
        assert (row["raters"], row["ratings"]) == (3, 45)
    assert frame.loc[0, "paper_text"] == 4.518 and frame.loc[2, "paper_fidelity"] == 2.904

    table = parse_markdown(out / "table2_user_study.md")
    assert table.header == ["Method", "Image Fidelity ↑", "Image (paper)", "Mask Accuracy ↑",
                            "Mask (paper)", "Text Accuracy ↑", "Text (paper)", "Raters",
                            "Ratings"]  # fmt: skip
    mean = np.mean(expected[("ccis", "fidelity")])
    sd = np.std(expected[("ccis", "fidelity")], ddof=1)
    assert table.rows[0][:3] == ["CCIS-Diff (ours)", f"{mean:.2f} ± {sd:.2f}", "4.266"]
    assert table.rows[1][2] == "3.852" and table.rows[2][-2:] == ["3", "45"]
    notes = " ".join(table.notes)
    assert "Krippendorff's α (ordinal" in notes and "all criteria pooled 1.00" in notes
    assert "(paper): Table 2 of the CCIS-Diff paper" in notes
    consistency = table.after[0]
    assert consistency.rows[2] == ["r3|x", "54", "9", "100 %", "100 %", "0.00"]

    # The HTML report picks Table 2 up from its folder, after Table 1.
    (out / "table1_generation.md").write_text("| Method | FID |\n|---|---:|\n| x | 1 |\n")
    index = build_report(out, [("Table 1 – generation", out / "table1_generation.md")], [],
                         None, versions=[], generated="now")  # fmt: skip
    page = index.read_text()
    assert page.index("Table 1 – generation") < page.index("Table 2 – user study, clinician")
    assert "4.266" in page and "r3|x" in page

    # No ratings: a clear error, no table.
    conn = sqlite3.connect(study)
    conn.execute("DELETE FROM ratings")
    conn.commit()
    conn.close()
    capsys.readouterr()
    code = main(["rating-table", "--study", str(study), "--out-csv", str(tmp_path / "t.csv"),
                 "--out-md", str(tmp_path / "t.md")])  # fmt: skip
    assert code == 2 and f"{study}: no ratings yet" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_workflow_targets_table2_only_once_ratings_exist(micro_workdir):
    """Dry runs: no study, no Table 2; a study file with a rating adds rating_table."""
    proc = snakemake(micro_workdir, "-n", "all", "rating_study")
    assert "rating_study" in proc.stdout and "rating_table" not in proc.stdout
    study = micro_workdir / "results" / "rating" / "study.sqlite"
    study.parent.mkdir(parents=True)
    conn = sqlite3.connect(study)
    conn.execute("CREATE TABLE ratings (value INTEGER)")
    conn.execute("INSERT INTO ratings VALUES (3)")
    conn.commit()
    conn.close()
    proc = snakemake(micro_workdir, "-n")
    assert "rating_table" in proc.stdout
