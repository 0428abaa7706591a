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
