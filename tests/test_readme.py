import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    ci_lines = [
        x
        for x in (ROOT / ".ci/run").read_text().splitlines()
        if x and not x.startswith(("#", "set ", "cd "))
    ]
    assert ci_lines == [test_cmd]


def test_install_commands_pin_torch():
    readme = (ROOT / "README.md").read_text()
    for line in re.findall(r"^pip install.*$", readme, re.M):
        assert "torch==2.13.0" in line


def _slug(heading: str) -> str:
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"^#{1,6} ", line):
            found.add(_slug(line.lstrip("#")))
    return found


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        fence = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                fence = not fence
            if fence:
                continue
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                if not file.exists():
                    broken.append(f"{page.name}: {target} (no such file)")
                elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_stays_short_and_indexes_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in readme, f"README does not link {doc.name}"


def test_the_methods_page_lists_every_loss_and_scheme():
    from distill.losses.table import LOSSES
    from distill.schemes.table import SCHEMES

    page = (ROOT / "docs" / "methods.md").read_text()
    missing = [n for n in [*LOSSES, *SCHEMES] if f"| `{n}` |" not in page]
    assert not missing, f"docs/methods.md has no row for {missing}"


def test_the_readme_demo_output_has_the_shape_distill_demo_prints():
    """The README's printed demo block, read back into a result, is exactly what
    `format_demo` prints for it: the same header, columns, rows and closing lines (and the
    printed gain is the difference of the printed accuracies)."""
    import re

    from distill.app.demo import format_demo

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(distill demo: .*?)\n```", readme, re.S).group(1)
    lines = block.splitlines()
    head = re.match(
        r"distill demo: (\w+), seed (\d+), (\d+) epochs per model; (\d+) labelled \+ (\d+) "
        r"unlabelled training inputs, (\d+) test samples$",
        lines[0],
    )
    assert head, lines[0]
    rows = []
    for line in lines[3:]:
        if line.startswith("distillation vs scratch"):
            break
        model, acc, params, size, latency, agree = re.split(r"\s{2,}", line.strip())
        rows.append(
            {
                "model": model,
                "test_acc": float(acc.rstrip("%")) / 100,
                "params": int(params.replace(",", "")),
                "size_bytes": float(size.split()[0]) * 1024,
                "latency_ms": float(latency.split()[0]) / 1000,
                "agreement": float(agree.rstrip("%")) / 100,
            }
        )
    acc = {r["model"]: r["test_acc"] for r in rows}
    result = {
        "dataset": head.group(1),
        "seed": int(head.group(2)),
        "epochs": int(head.group(3)),
        "train_labelled": int(head.group(4)),
        "train_unlabelled": int(head.group(5)),
        "test_samples": int(head.group(6)),
        "kd_gain": acc["student-kd"] - acc["student-scratch"],
        "rows": rows,
    }
    assert [r["model"] for r in rows] == ["teacher", "student-scratch", "student-kd"]
    assert format_demo(result) == block
