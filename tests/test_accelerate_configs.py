"""Every shipped accelerate config loads in accelerate, says what it is for and how to launch it, and plans."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))


def test_the_shipped_set():
    names = {p.stem for p in CONFIGS}
    assert {"multi_gpu", "deepspeed_zero3", "deepspeed_zero3_offload", "fsdp", "cpu_2proc", "cpu_zero3"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_documents_its_launch_line(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert len(header) >= 3, "a header says what the file is for"
    launch = f"accelerate launch --config_file accelerate_configs/{path.name} -m align run recipes/"
    assert any(launch in line for line in header), f"{path.name}: no launch line naming itself"
    if config.distributed_type == "DEEPSPEED" and config.deepspeed_config.get("deepspeed_config_file"):
        assert (ROOT / config.deepspeed_config["deepspeed_config_file"]).is_file()


def test_planner_reads_each_gpu_layout():
    from align.plan.distributed import parallel_from

    layouts = {p.stem: parallel_from(str(p), None) for p in CONFIGS}
    assert layouts["multi_gpu"].kind == "ddp"
    assert (layouts["deepspeed_zero3"].kind, layouts["deepspeed_zero3"].zero_stage) == ("zero", 3)
    offload = layouts["deepspeed_zero3_offload"]
    assert (offload.kind, offload.zero_stage) == ("zero", 3) and "optimizer offload" in offload.source
    assert "param offload" in offload.source
    assert layouts["fsdp"].kind == "zero"  # FULL_SHARD is planned like ZeRO-3
    assert layouts["fsdp"].gpus == layouts["multi_gpu"].gpus == 8


def test_fsdp_config_is_full_shard_by_decoder_layer():
    import yaml

    fsdp = yaml.safe_load((ROOT / "accelerate_configs" / "fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "MixtralDecoderLayer"
    from transformers.models.mixtral import modeling_mixtral

    assert hasattr(modeling_mixtral, fsdp["fsdp_transformer_layer_cls_to_wrap"])
