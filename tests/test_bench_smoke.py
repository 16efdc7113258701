"""bench.trl_compare end to end on its smallest configuration: the JSON it writes and the same-math checks."""

from __future__ import annotations

import json

import pytest

from bench.trl_compare import main

PATH_KEYS = {"tokens_per_s", "s_per_step_median", "mfu", "first_losses", "step_peak_over_start_mib", "steps"}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "trl_compare.json"
    argv = ["--quick", "--hidden", "64", "--layers", "2", "--experts", "4", "--batch", "4", "--rows", "12"]
    assert main([*argv, "--steps", "3", "--work", str(tmp / "work"), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_json_schema(result):
    machine = result["machine"]
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert machine["matmul_rates_start"]["fp32_gflops"] > 0
    (config,) = result["configs"]
    assert config["shape"]["hidden"] == 64 and config["data"] == "rows"
    for stage in ("sft", "dpo"):
        summary = config[stage]
        assert set(summary["paths"]) == {"trl", "trl_attn", "align"}
        for path in summary["paths"].values():
            assert PATH_KEYS <= set(path)
            assert path["tokens_per_s"] > 0 and path["s_per_step_median"] > 0 and 0 < path["mfu"] < 1
            assert len(path["steps"]) == 3 and path["steps_measured"] == 2  # 1 warm-up step left out
            assert all(s["tokens"] <= s["positions"] and s["scored"] <= s["tokens"] for s in path["steps"])
        assert summary["ratios"]["tokens_per_s_align_over_trl"] > 0
    # the DPO reference of align was precomputed (and cached) before the first step
    assert config["dpo"]["paths"]["align"]["reference_cache"]["train"]["hit"] is False


def test_paths_compute_the_same_losses(result):
    for stage in ("sft", "dpo"):
        checks = result["configs"][0][stage]["checks"]
        assert checks["first_step_loss_equal"] and checks["first_step_grad_norm_equal"], checks
        assert checks["second_step_loss_equal"], checks  # same gradients and optimizer step
    assert result["configs"][0]["dpo"]["checks"]["first_step_logps_equal"]
    sft = result["configs"][0]["sft"]["checks"]["first_step_loss"]
    assert set(sft) == {"trl", "trl_attn", "align"}
