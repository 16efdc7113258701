"""The `align` command: documented subcommands exist, user errors are one line with exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from align.cli import main


def test_readme_commands_are_real_subcommands(repo_root):
    readme = (repo_root / "README.md").read_text()
    code_blocks = "\n".join(re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL))
    documented = set(re.findall(r"^align ([a-z-]+)", code_blocks, flags=re.MULTILINE))
    assert {"run", "sft", "dpo", "check", "tiny-model"} <= documented
    for name in documented:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0


def test_check_prints_the_resolved_recipe(capsys):
    assert main(["check", "recipes/tiny-mixtral/pipeline.yaml", "dpo.beta=0.05"]) == 0
    out = capsys.readouterr().out
    assert "beta: 0.05" in out and "name_or_path: runs/tiny-base" in out


def test_user_error_is_one_line_and_exit_code_2(capsys, tmp_path):
    assert main(["check", "recipes/tiny-mixtral/pipeline.yaml", "dpo.max_prompt_length=128"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("align: error: 'dpo.max_prompt_length' in recipes/tiny-mixtral/pipeline.yaml")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_python_dash_m_align_is_the_same_command(repo_root):
    proc = subprocess.run(
        [sys.executable, "-m", "align", "check", "recipes/tiny-mixtral/pipeline.yaml", "lora.rr=2"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown key 'lora.rr' in recipes/tiny-mixtral/pipeline.yaml; did you mean 'r'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_data_row_stops_the_run_naming_file_and_row(tmp_path, tiny_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}\n')
    code = main(
        [
            "run",
            "recipes/tiny-mixtral/pipeline.yaml",
            f"output_dir={tmp_path}/out",
            f"model.name_or_path={tiny_dir}",
            f"data.sft.train=[{{path: {bad}}}]",
            "stages=[sft]",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"{bad} row 1: turn 2: empty content" in err
    assert not (tmp_path / "out" / "sft").exists()  # nothing that looks like a finished output


def test_sft_with_packing_runs(tmp_path, tiny_dir):
    code = main(
        [
            "sft",
            "recipes/tiny-mixtral/sft.yaml",
            f"output_dir={tmp_path}",
            f"model.name_or_path={tiny_dir}",
            "sft.packing=true",
            "sft.max_steps=3",
            "sft.eval_samples=8",
        ]
    )
    assert code == 0
    import json

    ev = json.loads((tmp_path / "sft" / "eval.json").read_text())
    assert ev["steps"] == 3 and ev["eval_loss_after"] < ev["eval_loss_before"]
