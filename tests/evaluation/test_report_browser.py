"""The report in a real browser: headless Chromium (Debian's ``chromium``) loads report.html,
every image decodes, the console stays clean, and the sort buttons order the gallery.

A copy of the report gets a small harness: a first script that records errors (window errors,
failed loads, CSP violations, console.error/warn calls), and a last one that, on load, counts the
images that decoded, clicks each sort button, and writes all of it as JSON into a ``<pre>`` that
``--dump-dom`` prints. Chromium's own log (``--enable-logging=stderr``) must hold no console line.
The last test breaks an image and the script on purpose, to show the check can fail.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_report import make_run  # tests/evaluation is on sys.path (pytest's rootdir-relative import)

from vqa_grpo.evaluation.report import PLOTS, write_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
)
# Headless as root in a closed network: no sandbox, no GPU, nothing that phones home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
    "--dump-dom",
]
HARNESS_HEAD = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window && t.tagName ? "failed to load " + t.tagName : "error: " + e.message);
}, true);
document.addEventListener("securitypolicyviolation", function (e) { window.__errors.push("CSP: " + e.blockedURI); });
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__errors.push(level + ": " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
});
</script>"""
HARNESS_TAIL = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var orders = {};
  Array.prototype.forEach.call(document.querySelectorAll("button[data-sort]"), function (button) {
    button.click();
    orders[button.textContent] = Array.prototype.map.call(
      document.querySelectorAll("#gallery-body tr"), function (r) { return r.getAttribute("data-id"); });
  });
  var pre = document.createElement("pre");
  pre.id = "harness";
  pre.textContent = JSON.stringify({images: images.length, loaded: loaded, errors: window.__errors, orders: orders});
  document.body.appendChild(pre);
});
</script>"""


def render(page: str, where: Path) -> tuple[dict, list[str]]:
    """(the harness's findings, Chromium's console lines) for ``page`` with the harness added."""
    assert page.count("<head>") == 1 and page.count("</body>") == 1
    page = page.replace("<head>", "<head>" + HARNESS_HEAD).replace("</body>", HARNESS_TAIL + "</body>")
    file = where / "harnessed.html"
    file.write_text(page, encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", file.as_uri()], capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="harness">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the harness did not run; stderr: {proc.stderr[-2000:]}"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return json.loads(html.unescape(found.group(1))), console


@pytest.fixture(scope="module")
def report(tmp_path_factory, synth_dir):
    root = tmp_path_factory.mktemp("browser")
    run = make_run(root, synth_dir)
    path = write_report(run["run"], before=run["before"], after=run["after"], data_path=run["data"], out=None)
    return path.read_text(encoding="utf-8"), run, root


def test_every_image_loads_and_the_console_is_clean(report):
    page, run, root = report
    result, console = render(page, root)
    assert result["errors"] == [] and console == []
    assert result["images"] == len(PLOTS) + 12  # six plots, twelve thumbnails (one corrupt image skipped)
    assert result["loaded"] == result["images"]


def test_sort_buttons_order_the_gallery(report):
    page, run, root = report
    result, console = render(page, root)
    gains = run["gains"]
    assert result["orders"] == {
        "largest gains": sorted(gains, key=lambda i: (-gains[i], i)),
        "largest losses": sorted(gains, key=lambda i: (gains[i], i)),
        "by id": sorted(gains),
    }
    assert result["errors"] == [] and console == []


def test_the_check_fails_on_a_broken_image_and_a_script_error(report):
    page, run, root = report
    head, payload = page.split("data:image/png;base64,", 1)
    broken = head + "data:image/png;base64,AAAA" + payload[payload.index('"') :]  # the first plot, undecodable
    broken = broken.replace("</body>", "<script>notDefinedAnywhere();</script></body>")
    result, console = render(broken, root)
    assert result["loaded"] == result["images"] - 1
    assert any("failed to load IMG" in e for e in result["errors"])
    assert any("notDefinedAnywhere" in e for e in result["errors"])
    assert any("Uncaught" in line for line in console)
