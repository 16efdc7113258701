"""Figures: training curves follow what was logged, long-context figure, and the pipeline writes both
the per-stage curves and the end-of-run report that references them."""

from __future__ import annotations

import json

import pytest

from align.plots import long_context_figure, read_metrics, training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


def _metrics(path, dpo: bool):
    lines = []
    for step in range(1, 21):
        record = {"stage": "dpo" if dpo else "sft", "step": step, "loss": 2.0 / step, "aux_loss": 2.0 + 0.01 * step}
        record["learning_rate"] = 1e-4 * (1 - step / 20)
        if dpo:
            record.update({"rewards/accuracies": min(1.0, step / 10), "rewards/margins": 0.05 * step})
            record.update({"rewards/chosen": 0.02 * step, "rewards/rejected": -0.03 * step})
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": 20, "train_loss": "nan"}))  # non-finite values are logged as strings
    path.write_text("\n".join(lines) + '\n{"step": 21, "loss": 0.')  # a killed run's half line
    return path


def test_curves_have_a_panel_per_logged_quantity(tmp_path):
    sft = training_curves(_metrics(tmp_path / "sft.jsonl", dpo=False), tmp_path / "sft.png", "sft")
    dpo = training_curves(_metrics(tmp_path / "dpo.jsonl", dpo=True), tmp_path / "dpo.png", "dpo")
    sft_img, dpo_img = _image(sft), _image(dpo)
    assert sft.stat().st_size > 10_000 and sft_img.std() > 0.05  # drawn, not a blank canvas
    # sft: loss, aux loss, lr = one row of 3 panels; dpo adds accuracy and margins = two rows
    assert dpo_img.shape[0] > 1.5 * sft_img.shape[0] and dpo_img.shape[1] == sft_img.shape[1]
    assert len(read_metrics(tmp_path / "sft.jsonl")) == 21


def test_nothing_to_plot_writes_nothing(tmp_path):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text('{"step": 1, "train_runtime": "n/a"}\n')
    assert training_curves(metrics, tmp_path / "x.png") is None and not (tmp_path / "x.png").exists()


def test_long_context_figure(tmp_path):
    result = {
        "passkey": [{"length": n, "position": p, "accuracy": p, "trials": 2} for n in (256, 512) for p in (0.1, 0.9)],
        "perplexity": [{"length": 256, "perplexity": 12.0}, {"length": 512, "perplexity": 10.5}],
    }
    img = _image(long_context_figure(result, tmp_path / "lc.png", "t"))
    assert img.shape[1] > img.shape[0] and img.std() > 0.05


@pytest.mark.slow
def test_pipeline_writes_curves_and_the_report(tmp_path, tiny_dir):
    from align.cli import main

    code = main(
        [
            "run",
            "recipes/tiny-mixtral/pipeline.yaml",
            f"output_dir={tmp_path}",
            f"model.name_or_path={tiny_dir}",
            "sft.max_steps=3",
            "dpo.max_steps=3",
            "sft.eval_samples=8",
            "dpo.eval_samples=8",
            "lora.profile_max_tokens=2000",
        ]
    )
    assert code == 0
    for stage in ("sft", "dpo"):
        assert _image(tmp_path / stage / "curves.png").std() > 0.05
        assert "](curves.png)" in (tmp_path / stage / "README.md").read_text()  # the model card shows them
    summary = json.loads((tmp_path / "summary.json").read_text())
    report = (tmp_path / "eval" / "eval.md").read_text()
    assert summary["report"] == str(tmp_path / "eval" / "eval.md")
    assert "![training curves, sft](curves_sft.png)" in report and (tmp_path / "eval" / "curves_dpo.png").exists()
    assert "## dpo: held-out, before -> after (3 steps)" in report and "**reply**" in report
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["stages"]["dpo"]["steps"] == 3 and len(saved["samples"]) == 3
