"""The HTML report in a real browser: every chart renders, nothing errors, it prints.

Uses headless Chromium (Debian package ``chromium``) through its command line: a copy
of the report gets a small script appended that measures each ``<svg>`` and writes the
results into the DOM, which ``--dump-dom`` prints. Console messages (a failed resource
load, a script error) appear on stderr with ``--enable-logging=stderr``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shadowproxy.compare import jsonpath
from shadowproxy.report import ReportOptions, build_report, render
from tests import synthetic

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not on PATH (Debian: apt-get install -y chromium); "
    "the browser-level check of the HTML report needs it",
)

PROBE = """<script>
(function () {
  var svgs = Array.prototype.slice.call(document.querySelectorAll('svg'));
  var blank = svgs.filter(function (s) {
    var box = s.getBoundingClientRect(), inner = s.getBBox();
    // Data marks only: grid and axis lines alone are not a drawn chart.
    var marks = s.querySelectorAll('rect,path,polyline,polygon,circle').length;
    return !(box.width > 50 && box.height > 20 && inner.width > 0 && inner.height > 0 && marks);
  });
  document.body.setAttribute('data-svg-count', svgs.length);
  document.body.setAttribute('data-svg-blank', blank.length);
  document.body.setAttribute('data-width', document.documentElement.scrollWidth);
  var card = document.querySelector('.card');
  var cardBox = card ? card.getBoundingClientRect() : null;
  document.body.setAttribute('data-cards', document.querySelectorAll('.card').length);
  document.body.setAttribute('data-card-top', cardBox ? Math.round(cardBox.top) : 99999);
  document.body.setAttribute('data-card-bottom', cardBox ? Math.round(cardBox.bottom) : 99999);
  document.body.setAttribute('data-viewport', window.innerHeight);
})();
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1366,768",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    synthetic.generate(base / "rec", synthetic.example_spec(requests=400))
    options = ReportOptions(
        root=str(base / "rec"), segments=(jsonpath.parse("$.instances[0].country"),)
    )
    report = build_report(options, now=datetime(2024, 6, 1, tzinfo=UTC), progress=False)
    path = base / "report.html"
    path.write_text(render.render(report))
    return path


def test_charts_render_without_console_errors(page: Path, tmp_path: Path) -> None:
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = chromium("--dump-dom", probed.as_uri(), profile=tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body is not None, done.stdout[:500]
    attributes = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    # 3 pairs x (timeline, latency, + confusion or diff histogram, + segments) charts.
    assert int(attributes["svg-count"]) >= 12, attributes
    assert attributes["svg-blank"] == "0"
    assert int(attributes["width"]) <= 1366  # no horizontal scrolling on a laptop screen
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    # The first decision card (a candidate's) is on screen without scrolling at 1366x768.
    assert int(attributes["cards"]) == 2, attributes
    assert int(attributes["card-top"]) >= 0
    assert int(attributes["card-bottom"]) <= min(768, int(attributes["viewport"])), attributes


def test_report_prints_to_pdf(page: Path, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    done = chromium(
        f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri(), profile=tmp_path / "p"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    assert data.count(b"/Type /Page") - data.count(b"/Type /Pages") >= 3  # a page per shadow
