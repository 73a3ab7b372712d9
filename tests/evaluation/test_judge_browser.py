"""The judge page in a real browser: headless Chromium (Debian's ``chromium``, as
test_report_browser.py runs it) opens judge.html, a person's keys and clicks mark the answers,
a reload keeps them, Export downloads the JSONL, and ``vqa-grpo agreement`` reads that file.

The browser is driven through the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in a NUL byte on file descriptors 3 and 4), so the key presses and mouse clicks are
the browser's own input events and the download is a real file; no package beyond Chromium.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time

import pytest
from test_judge import make_evals  # tests/evaluation is on sys.path (pytest's rootdir-relative import)
from test_report_browser import CHROMIUM, FLAGS

from vqa_grpo import cli

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
)
PIPE_FLAGS = [f for f in FLAGS if not f.startswith(("--dump-dom", "--virtual-time-budget"))] + [
    "--remote-debugging-pipe"
]
KEYS = {"right": "1", "partly": "2", "wrong": "3"}


class Browser:
    """One headless Chromium and one page of it, spoken to over the DevTools pipe."""

    def __init__(self, profile: str):
        r_in, self._w = os.pipe()  # we write, Chromium reads fd 3
        self._r, w_out = os.pipe()  # Chromium writes fd 4, we read

        def onto_3_and_4() -> None:  # in the child: Chromium's pipe ends as fds 3 and 4
            a, b = os.dup(r_in), os.dup(w_out)
            os.dup2(a, 3), os.dup2(b, 4)

        cmd = [CHROMIUM, *PIPE_FLAGS, f"--user-data-dir={profile}"]
        self.log = open(os.path.join(profile, "chromium.log"), "w+b")  # a file: a full pipe would stall it
        self.proc = subprocess.Popen(
            cmd, pass_fds=(3, 4), preexec_fn=onto_3_and_4, stdout=subprocess.DEVNULL, stderr=self.log
        )
        os.close(r_in), os.close(w_out)
        self._buf, self._id = b"", 0
        self.events: list[dict] = []  # every event, for the check that the page raised none
        self._pending: list[dict] = []  # events no wait() has taken yet
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.page(f"{domain}.enable")

    def _next(self, deadline: float) -> dict:
        """The next message; an event is also kept in ``events`` and ``_pending``."""
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "Chromium did not answer in time"
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                self.log.seek(0)
                raise AssertionError("Chromium closed the pipe: " + self.log.read().decode()[-2000:])
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
            self._pending.append(message)
        return message

    def wait(self, method: str, timeout: float = 20) -> dict:
        """The parameters of the first event ``method`` not taken yet (it may have come already)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._pending):
                if event["method"] == method:
                    del self._pending[: i + 1]
                    return event["params"]
            self._next(deadline)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 20
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def page(self, method: str, **params) -> dict:
        return self.send(method, self.session, **params)

    def js(self, expression: str, session: str | None = None):
        result = self.send("Runtime.evaluate", session or self.session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def open(self, url: str, reload: bool = False) -> None:
        """Navigate (or reload) and return once the new document has loaded. A load event still in
        the pipe from an earlier load would pass ``wait`` early, so the old document is marked first
        and the new one is the one without the mark, loaded."""
        self.js("window.__replaced = true")
        self._pending.clear()  # the load event to wait for is this one's
        self.page("Page.reload") if reload else self.page("Page.navigate", url=url)
        self.wait("Page.loadEventFired")
        deadline = time.monotonic() + 20
        while self.js("window.__replaced === true || document.readyState !== 'complete'"):
            assert time.monotonic() < deadline, f"{url or 'the reload'} did not load"
            time.sleep(0.05)

    def until_stored(self, url: str, expression: str) -> None:
        """Wait until ``expression`` is true in a second tab at ``url``. A new tab has a renderer process
        of its own, so it reads localStorage from the browser's copy, which a reloaded page may also be
        given; the first page's writes reach that copy asynchronously (late on a busy machine)."""
        target = self.send("Target.createTarget", url=url)["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        deadline = time.monotonic() + 20
        while not self.js(f"document.readyState === 'complete' && !!({expression})", session):
            assert time.monotonic() < deadline, f"the browser never held: {expression}"
            time.sleep(0.05)
        self.send("Target.closeTarget", targetId=target)

    def key(self, key: str, repeat: bool = False) -> None:
        """A key pressed and let go; ``repeat``: the press is an auto-repeat of a held key."""
        for kind in ("keyDown", "keyUp"):
            more = {"text": key, "autoRepeat": repeat} if kind == "keyDown" else {}
            self.page("Input.dispatchKeyEvent", type=kind, key=key, **more)

    def name(self, text: str) -> None:
        """Type ``text`` over the Judge field's value, as a person who selects it and types."""
        self.js("(function () { var f = document.getElementById('judge-name'); f.focus(); f.select(); })()")
        self.page("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        box = self.js(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center'}); var r = e.getBoundingClientRect(); "
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self._w), os.close(self._r)
            self.log.close()


def test_judge_by_keyboard_and_mouse_reload_export_and_agreement(tmp_path, synth_dir, capsys):
    evals = make_evals(tmp_path, synth_dir)
    assert cli.main(["judge", evals["base"], evals["grpo"], "--data", evals["data"], "--out", str(tmp_path / "p")]) == 0
    key = json.loads((tmp_path / "p" / "key.json").read_text())
    pairs = ["judge", evals["base"], evals["grpo"], "--data", evals["data"], "--out", str(tmp_path / "pw")]
    assert cli.main([*pairs, "--mode", "pairwise"]) == 0
    answer = {(q["id"], s["slot"]): s["answer"] for q in key["questions"] for s in q["slots"]}
    downloads = tmp_path / "downloads"
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(profile)
        try:
            browser.send(
                "Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True
            )
            browser.open((tmp_path / "p" / "judge.html").as_uri())
            items = browser.js(
                "Array.prototype.map.call(document.querySelectorAll('.item'), "
                "function (e) { return [e.dataset.q, e.dataset.slot]; })"
            )
            labels = [evals["plan"][(i[0], answer[tuple(i)])] for i in items]  # what the person says, in page order

            def button(i: int) -> str:  # the button of item i's planned label
                return f'.item[data-q="{items[i][0]}"][data-slot="{items[i][1]}"] button[data-label="{labels[i]}"]'

            def progress() -> str:
                return browser.js("document.getElementById('progress').textContent")

            def pressed() -> list:
                return browser.js(
                    "Array.prototype.map.call(document.querySelectorAll('.item'), function (e) { "
                    "var b = e.querySelector('button[aria-pressed=true]'); return b && b.dataset.label; })"
                )

            assert progress() == "0 / 5 judged"
            # the mark buttons stand at one place whatever the answer's length
            lefts = browser.js(
                "Array.prototype.map.call(document.querySelectorAll('.item'), "
                "function (e) { return e.querySelector('button').getBoundingClientRect().left; })"
            )
            assert len(set(lefts)) == 1
            # no name yet: a key marks nothing and asks for one
            browser.key(KEYS[labels[0]])
            assert progress() == "0 / 5 judged"
            assert browser.js("document.getElementById('status').textContent").startswith("enter your name")
            browser.name("Ada")
            # item 0 by a click, 1 and 2 by key (each moves on to the next); a held key's repeat marks nothing
            browser.click(button(0))
            browser.key("j"), browser.key(KEYS[labels[1]]), browser.key(KEYS[labels[2]])
            browser.key(KEYS[labels[3]], repeat=True)
            assert progress() == "3 / 5 judged"
            (tmp_path / "p" / "blank.html").write_text("<!doctype html><title>blank</title>")
            ada = f"JSON.parse(localStorage.getItem('vqa-grpo-judge:{key['page']}:judge:Ada') || '{{}}')"
            browser.until_stored(
                (tmp_path / "p" / "blank.html").as_uri(), f"Object.keys({ada}.marks || {{}}).length == 3"
            )
            browser.open("", reload=True)  # nothing lost, and back at the answer Ada was on (3)
            assert progress() == "3 / 5 judged"
            assert browser.js("document.getElementById('judge-name').value") == "Ada"
            assert pressed() == labels[:3] + [None, None]
            at = "Array.prototype.indexOf.call(document.querySelectorAll('.item'), document.{})"
            assert browser.js(at.format("activeElement")) == 3
            assert browser.js(at.format("querySelector('.item.current')")) == 3
            # another name in the same browser: that person's own marks (none), not Ada's; Ada's come back
            browser.name("Bob")
            assert (progress(), pressed()) == ("0 / 5 judged", [None] * 5)
            browser.name("Ada")
            assert (progress(), pressed()) == ("3 / 5 judged", labels[:3] + [None, None])
            browser.click(button(3).rsplit(" ", 1)[0] + " .answer")  # back on item 3 (out of the field)
            browser.key("k"), browser.key("n")  # up to 2, then the next not judged (3); 3 by key, 4 by a click
            browser.key(KEYS[labels[3]])
            browser.click(button(4))
            assert browser.js("document.getElementById('progress').textContent") == "5 / 5 judged"
            browser.click("#export")
            done = browser.wait("Browser.downloadProgress")
            while done["state"] == "inProgress":
                done = browser.wait("Browser.downloadProgress")
            assert done["state"] == "completed"
            # the pairwise page: A and B take half the width each, whatever their lengths
            browser.open((tmp_path / "pw" / "judge.html").as_uri())
            widths = browser.js(
                "Array.prototype.map.call(document.querySelectorAll('.sides'), function (s) { return "
                "Array.prototype.map.call(s.children, function (c) { return c.getBoundingClientRect().width; }); })"
            )
            assert len(widths) == 2 and all(len(w) == 2 and w[0] == w[1] > 200 for w in widths)
            problems = [e for e in browser.events if e.get("method") in ("Runtime.exceptionThrown", "Log.entryAdded")]
            assert problems == []
        finally:
            browser.close()
    (exported,) = downloads.iterdir()
    assert exported.name == f"judgments-{key['page']}-Ada.jsonl"
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(j["question"], j["slot"], j["label"]) for j in lines] == [(*i, lab) for i, lab in zip(items, labels)]
    assert {(j["page"], j["mode"], j["judge"]) for j in lines} == {(key["page"], "grade", "Ada")}

    capsys.readouterr()
    assert cli.main(["agreement", str(exported), "--judge-dir", str(tmp_path / "p"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["judgments"], result["judged_units"], result["units"], result["judges"]) == (5, 5, 5, ["Ada"])
    # metric right/wrong [1, 0, 1, 0, 0] (the plan's order); people [1, 0, 1, 0, 1] (partly counts as right):
    # accuracy 4/5; p_e = 0.4 * 0.6 + 0.6 * 0.4 = 0.48, kappa = (0.8 - 0.48) / 0.52 = 0.6154.
    # Ranks: metric [4.5, 2, 4.5, 2, 2], people (1, 0, 0.5, 0, 1) [4.5, 1.5, 3, 1.5, 4.5];
    # rho = 3.75 / sqrt(7.5 * 9) = 0.45644.
    vqa = result["metrics"]["vqa_accuracy"]
    assert vqa["n"] == 5 and vqa["accuracy"]["value"] == pytest.approx(0.8)
    assert vqa["kappa"]["value"] == pytest.approx(0.32 / 0.52) and vqa["spearman"]["value"] == pytest.approx(
        0.456435, abs=1e-6
    )
    # semantic (threshold 0.8) says "close guess" is right too: it agrees on every answer
    assert result["metrics"]["semantic"]["accuracy"]["value"] == 1.0
    assert result["metrics"]["semantic"]["kappa"]["value"] == pytest.approx(1.0)
    assert {m["eval"]: m["people"] for m in result["models"]} == {
        str(tmp_path / "base"): 0.5,
        str(tmp_path / "grpo"): 0.5,
    }
