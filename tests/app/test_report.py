"""distill report: files, contents, and a real render in headless Chromium."""

import os
import re
import shutil
import subprocess

import pytest
from helpers import synthetic_cfg

from distill.app.cli import main
from distill.app.report import _per_class_figure, pareto_front, run_labels
from distill.app.run import run_experiment
from distill.core.config import parse_config


def test_pareto_front():
    points = [(1.0, 80.0), (2.0, 85.0), (1.5, 79.0), (3.0, 84.0), (0.5, 70.0)]
    assert pareto_front(points) == [4, 0, 1]  # (1.5, 79) and (3, 84) are dominated
    # a tie in cost keeps the more accurate point only; a tie in accuracy the cheaper one
    assert pareto_front([(1.0, 80.0), (1.0, 75.0), (2.0, 80.0)]) == [0]


def test_runs_are_labelled_apart(tmp_path):
    """Issue 39: a KD and a scratch student both in a folder called seed0."""
    dirs = [tmp_path / "bench/kd/seed0", tmp_path / "bench/scratch/seed0", tmp_path / "x/teacher"]
    assert run_labels(dirs) == ["kd/seed0", "scratch/seed0", "x/teacher"]
    assert run_labels([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    for name, epochs in (("small", 1), ("longer", 3)):
        run_experiment(parse_config(synthetic_cfg(root / name, train={"epochs": epochs})))
    assert (
        main(["report", str(root / "small"), str(root / "longer"), "--out", str(root / "out")]) == 0
    )
    return root / "out"


def test_report_files(report_dir):
    md = (report_dir / "report.md").read_text()
    assert "| run | top-1 % |" in md and "| small |" in md and "| longer |" in md
    for key in ("curves", "reliability", "pareto_latency", "pareto_size", "per_class"):
        assert f"({key}.png)" in md
        assert (report_dir / f"{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and 'src="http' not in page  # self-contained


def _chromium() -> str:
    """Debian's chromium; the test set-up installs it when missing (CI runs as root)."""
    path = shutil.which("chromium")
    if path:
        return path
    if os.geteuid() != 0:
        pytest.fail("the browser test needs Debian's chromium: apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, capture_output=True
    )
    return shutil.which("chromium") or pytest.fail("chromium did not install")


def test_report_renders_in_a_real_browser(report_dir, tmp_path):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    page = (report_dir / "report.html").resolve().as_uri()
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    assert 'data-plots-visible="5"' in dom  # all 5 plots decoded and laid out with a width
    assert 'data-tables="3"' in dom  # header + 2 runs
    wide = subprocess.run(
        [_chromium(), *flags, "--window-size=1400,2400", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    pct = int(re.search(r'data-plot-width-pct="(\d+)"', wide).group(1))
    assert pct >= 85, pct  # the full-width plots span the page, not 40 % of it
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,2400", page],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.parametrize("classes", [3, 10])
def test_per_class_bars_sit_on_their_class_ticks_and_the_legend_is_outside(classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [
        {
            "name": f"run{k}",
            "eval": {"metrics": {"per_class": [0.5 + 0.04 * c for c in range(classes)]}},
        }
        for k in range(3)
    ]
    fig = _per_class_figure(plt, runs)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == list(range(classes))
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in range(classes)]
    centers = sorted(p.get_x() + p.get_width() / 2 for p in ax.patches)
    for c in range(classes):  # each class's group of 3 bars is centred on its tick
        group = centers[3 * c : 3 * c + 3]
        assert sum(group) / 3 == pytest.approx(c)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    axes_box = ax.get_window_extent()
    assert legend.y0 >= axes_box.y1 - 1  # above the plotting area: it covers no bar
    plt.close(fig)


def test_report_evaluates_again_when_eval_json_is_older_than_the_weights(tmp_path, capsys):
    import json

    from distill.app.assess import assess

    run = tmp_path / "r"
    run_experiment(parse_config(synthetic_cfg(run, train={"epochs": 1})))
    first = assess(run)
    assert len(first["weights_sha256"]) == 64
    stale = {**first, "metrics": {**first["metrics"], "top1": 0.123}}
    (run / "eval.json").write_text(json.dumps(stale))
    assert main(["report", str(run), "--out", str(tmp_path / "a")]) == 0
    assert "0.123" not in (tmp_path / "a/report.md").read_text()  # same weights: it is kept...
    assert "12.30" in (tmp_path / "a/report.md").read_text()
    # ...until the weights change (e.g. a resumed run wrote new best weights): then it is
    # evaluated again
    other = tmp_path / "r2"
    run_experiment(parse_config(synthetic_cfg(other, train={"epochs": 2, "seed": 5})))
    best = "checkpoints/best.safetensors"
    (run / best).write_bytes((other / best).read_bytes())
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "b")]) == 0
    assert "older than the weights it describes" in capsys.readouterr().err
    assert "12.30" not in (tmp_path / "b/report.md").read_text()
