"""A TRL user's `DistillationTrainer` script (TRL 1.16: a `DistillationConfig`, models as
folder paths, conversational prompts, on-policy) runs under distill's trainer with only the
import changed (issue 42, shown in docs/language-models.md). The same script runs under
TRL's own trainer first, so the script is a real TRL one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")
pytest.importorskip("trl")

from test_llm_chat import WORDS, _pair, _tokenizer

SCRIPT = textwrap.dedent("""
    import sys
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DistillationConfig
    {import_line}

    folder, out = sys.argv[1], sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(f"{{folder}}/student")
    words = {words!r}
    prompts = Dataset.from_list([
        {{"prompt": [{{"role": "user", "content": " ".join(words[i % 7: i % 7 + 3])}}]}}
        for i in range(16)
    ])
    args = DistillationConfig(
        output_dir=out, per_device_train_batch_size=4, max_steps=2, max_completion_length=6,
        beta=0.5, temperature=0.9, learning_rate=1e-3, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True,
    )
    trainer = DistillationTrainer(
        model=f"{{folder}}/student", teacher_model=f"{{folder}}/teacher", args=args,
        train_dataset=prompts, processing_class=tokenizer,
    )
    trainer.train()
    print("SCRIPT-OK", trainer.state.global_step, type(trainer).__module__)
""")


def _run_script(tmp_path, import_line: str, module: str) -> None:
    tok = _tokenizer("chatml")
    teacher, student = _pair(len(tok))
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    script = tmp_path / f"script_{module.rstrip('.')}.py"
    script.write_text(SCRIPT.format(import_line=import_line, words=WORDS))
    done = subprocess.run([sys.executable, str(script), str(tmp_path), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    line = [x for x in done.stdout.splitlines() if x.startswith("SCRIPT-OK")]
    assert done.returncode == 0 and line, done.stderr[-3000:]
    _, steps, where = line[0].split()
    assert steps == "2" and where.startswith(module)


def test_a_trl_script_runs_with_distills_trainer_by_its_import_alone(tmp_path):
    _run_script(tmp_path, "from distill import DistillationTrainer", "distill.")


@pytest.mark.slow
def test_the_script_is_a_real_trl_script(tmp_path):
    _run_script(tmp_path, "from trl import DistillationTrainer", "trl.")


def test_a_trl_config_sets_the_trainers_meaning():
    from trl import DistillationConfig

    from distill.llm.trl_compat import resolve_options

    cfg = DistillationConfig(output_dir="x", beta=1.0, temperature=0.7, max_completion_length=9,
                             use_cpu=True, report_to=[])  # fmt: skip
    o = resolve_options({"kd_weight": None, "lmbda": None}, cfg)
    assert o["divergence"] == "jsd" and o["beta"] == 1.0 and o["lmbda"] == 1.0
    assert o["temperature"] == o["generation_temperature"] == 0.7 and o["max_new_tokens"] == 9
    assert o["kd_weight"] == 1.0 and o["task_weight"] == 0.0
    assert resolve_options({"divergence": "forward_kl"}, cfg)["divergence"] == "forward_kl"
    assert resolve_options({}, None)["lmbda"] == 0.0  # distill's own defaults
