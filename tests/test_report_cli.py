"""``shadowproxy report`` from the command line: outputs, exit codes, messages."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from shadowproxy.cli import main
from tests import synthetic


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "shadow-logs"
    synthetic.generate(root, synthetic.example_spec(requests=400))
    return root


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may damage it."""
    return Path(shutil.copytree(pristine, tmp_path / "shadow-logs"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_html_and_json_and_prints_the_table(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html, summary = tmp_path / "out" / "report.html", tmp_path / "summary.json"
    code, out, err = run(
        capsys,
        str(root),
        "--out",
        str(html),
        "--json",
        str(summary),
        "--segment",
        "$.instances[0].country",
        "--route",
        "churn",
    )
    assert code == 0, err
    assert html.read_text().startswith("<!DOCTYPE html>")
    data = json.loads(summary.read_text())
    assert [p["shadow"] for p in data["pairs"]] == ["baseline", "candidate"]
    assert data["filters"]["route"] == ["churn"]
    assert data["pairs"][1]["segments"]
    assert "agreement [95% CI]" in out and "candidate" in out
    assert "candidate: disagrees on 10.0%" in out
    assert err == ""  # no progress bar when stderr is not a terminal
    assert [p.name for p in html.parent.iterdir()] == ["report.html"]  # no temporary left


def test_without_out_only_the_table_is_printed(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _err = run(capsys, str(root))
    assert code == 0
    assert "house-price" in out
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob("*.json"))


def test_missing_root_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, str(tmp_path / "nope"))
    assert code == 2
    assert f"recording directory {tmp_path / 'nope'} does not exist" in err


def test_root_without_pairs_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, str(tmp_path))
    assert code == 2
    assert "no Parquet files under" in err


def test_no_matching_rows_exits_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, str(root), "--route", "churn", "--since", "2030-01-01")
    assert code == 2
    assert "no rows in" in err and "match the filters" in err and "2030-01-01" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO date"),
        (["--segment", "instances.country"], "--segment: JSON path must start with '$'"),
        (
            ["--labels", "/nonexistent/labels.csv"],
            "cannot read labels file /nonexistent/labels.csv",
        ),
    ],
)
def test_bad_flags_exit_2(
    root: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code, _out, err = run(capsys, str(root), *flags)
    assert code == 2
    assert message in err


def test_labels_file_without_the_columns_exits_2(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    pacsv.write_csv(pa.table({"id": ["a"], "truth": ["cat"]}), labels)
    code, _out, err = run(capsys, str(root), "--labels", str(labels))
    assert code == 2
    assert f"labels file {labels} has columns id, truth" in err
    assert "needs a request_id column and a label column" in err


def test_labels_csv_is_used(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nchurn-00000001,cat\nchurn-00000002,dog\n")
    summary = tmp_path / "s.json"
    code, _out, _err = run(capsys, str(root), "--labels", str(labels), "--json", str(summary))
    assert code == 0
    assert json.loads(summary.read_text())["pairs"][0]["labels"]["n"] > 0


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_pages(path: Path) -> None:
    """Overwrite the data pages but keep the footer: only decoding finds this."""
    data = bytearray(path.read_bytes())
    footer = struct.unpack("<I", data[-8:-4])[0]
    end = len(data) - footer - 8
    for start in range(4, end, 128):
        data[start : start + 64] = b"\x5a" * min(64, end - start)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _damage_pages])
def test_corrupt_file_is_named_and_can_be_skipped(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object
) -> None:
    victim = sorted(root.glob("pairs/route=churn/date=2024-05-02/*.parquet"))[0]
    damage(victim)  # type: ignore[operator]
    code, _out, err = run(capsys, str(root))
    assert code == 2
    assert f"corrupt Parquet file {victim}" in err
    assert "--skip-bad-files" in err

    summary = tmp_path / "s.json"
    code, out, err = run(capsys, str(root), "--skip-bad-files", "--json", str(summary))
    assert code == 0, err
    data = json.loads(summary.read_text())
    assert [f["path"] for f in data["skipped_files"]] == [str(victim)]
    churn = next(p for p in data["pairs"] if p["shadow"] == "candidate")
    assert churn["rows"] == 200  # the first day only
    assert f"skipped unreadable file {victim}" in out


def test_the_proxy_never_imports_duckdb() -> None:
    code = (
        "import sys\n"
        "from shadowproxy import cli\n"
        "cli._parser().parse_args(['report', 'x'])\n"
        "assert 'duckdb' not in sys.modules and 'shadowproxy.report.load' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_entry_point_runs_the_report(pristine: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "report", str(pristine), "--shadow", "price-v3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "price-v3" in done.stdout and "churn" not in done.stdout


def test_progress_bar_runs_when_forced(pristine: Path) -> None:
    from datetime import UTC, datetime

    from shadowproxy.report import ReportOptions, build_report

    report = build_report(ReportOptions(root=str(pristine)), now=datetime.now(UTC), progress=True)
    assert len(report.pairs) == 3
