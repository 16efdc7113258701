"""align push against a real loopback HTTP server speaking the hub API huggingface_hub uses (tests/_hub_server)."""

from __future__ import annotations

import logging
import shutil
import socket

import pytest
from _hub_server import HubServer

from align.cli import main
from align.hub import HubError, push_folder

TOKEN = "hf_loopbackTESTtoken1234567890abcd"


@pytest.fixture
def hub(monkeypatch):
    """A fresh loopback hub; HF_ENDPOINT and HF_TOKEN point at it; Xet off (the server speaks LFS only)."""
    import huggingface_hub.constants as hub_constants

    with HubServer({TOKEN: {"org"}}) as server:
        monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def uploaded(server, repo_id, revision="main"):
    return server.state.repos[repo_id].branches[revision]


def assert_identical(server, repo_id, folder):
    files = uploaded(server, repo_id)
    local = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert set(files) == set(local) | {".gitattributes"}
    for name, data in local.items():
        assert files[name] == data, name


def test_push_command_uploads_the_adapter_in_one_commit_and_never_shows_the_token(
    tiny_run, hub, capfd, caplog, tmp_path
):
    caplog.set_level(logging.DEBUG)  # every logger, huggingface_hub's and httpx's included
    align_log = logging.getLogger("align")  # align's own logger does not propagate: listen to it too
    align_log.addHandler(caplog.handler)
    try:
        code = main(["push", str(tiny_run / "dpo"), "--repo-id", "org/tiny-dpo-lora", "--private"])
    finally:
        align_log.removeHandler(caplog.handler)
    out, err = capfd.readouterr()
    assert code == 0, err
    repo = hub.state.repos["org/tiny-dpo-lora"]
    assert repo.private and len(repo.commits) == 1
    assert_identical(hub, "org/tiny-dpo-lora", tiny_run / "dpo")
    assert {"adapter_model.safetensors", "routing.png"} <= repo.lfs_paths  # large/binary files went through LFS
    count = len([p for p in (tiny_run / "dpo").iterdir() if p.is_file()])
    assert f"/org/tiny-dpo-lora@main: {count} files uploaded, 0 unchanged" in out
    texts = [out, err, caplog.text]
    texts += [data.decode("utf-8", "replace") for data in uploaded(hub, "org/tiny-dpo-lora").values()]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in tiny_run.rglob("*") if p.is_file()]
    assert not [t for t in texts if TOKEN in t]
    assert ("GET", "/api/models/org/tiny-dpo-lora/revision/main") in hub.state.requests  # HF_ENDPOINT respected


def test_rerun_after_a_network_drop_uploads_only_what_is_missing(tiny_run, hub):
    folder = tiny_run / "final"
    hub.state.fail_next.add("commit")  # the connection drops during the commit: nothing is committed
    with pytest.raises(HubError) as err:
        push_folder(folder, "org/tiny-merged")
    message = str(err.value)
    assert "cannot reach" in message and "model-00001-of-00003.safetensors" in message and "config.json" in message
    assert set(uploaded(hub, "org/tiny-merged")) == {".gitattributes"}
    blobs = len(hub.state.lfs_puts)
    assert blobs == 4  # three shards and the routing figure reached LFS storage before the drop
    result = push_folder(folder, "org/tiny-merged")
    assert len(hub.state.lfs_puts) == blobs  # the rerun did not send them again
    assert result.commit and len(hub.state.repos["org/tiny-merged"].commits) == 1
    assert_identical(hub, "org/tiny-merged", folder)
    again = push_folder(folder, "org/tiny-merged")
    assert again.commit is None and not again.uploaded and len(hub.state.repos["org/tiny-merged"].commits) == 1


def test_push_to_a_new_branch(tiny_run, hub):
    result = push_folder(tiny_run / "dpo", "org/branchy", revision="v1")
    assert result.commit and set(uploaded(hub, "org/branchy", "v1")) > {"adapter_config.json"}
    assert set(uploaded(hub, "org/branchy", "main")) == {".gitattributes"}


def test_clear_errors(tiny_run, hub, monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    folder = tiny_run / "dpo"
    hub.state.add_repo("org/occupied", {"pytorch_model.bin": b"someone else's model"})
    with pytest.raises(HubError, match=r"already holds files that are not in this folder \(pytorch_model.bin\)"):
        push_folder(folder, "org/occupied")
    assert not hub.state.repos["org/occupied"].commits
    with pytest.raises(HubError, match="no permission to create someone/x with this token"):
        push_folder(folder, "someone/x")
    with pytest.raises(HubError, match="rejected the token"):
        push_folder(folder, "org/x", token="hf_notAValidTokenForThisHub")
    with pytest.raises(HubError, match="is not a hub repo id"):
        push_folder(folder, "org/bad name")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    with pytest.raises(HubError, match="no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        push_folder(folder, "org/x")
    (tmp_path / "token").write_text(TOKEN)  # the login cache
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    assert push_folder(folder, "org/from-login-cache").commit
    with socket.socket() as sock:  # a port nobody listens on: the network is down
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(HubError, match="cannot reach .*not uploaded: README.md, adapter_config.json"):
        push_folder(folder, "org/x", endpoint=closed)


def test_recipe_hub_section_pushes_at_the_end_of_a_run(tiny_run, hub, tmp_path):
    from align.config import load_recipe
    from align.export.finish import finish_run

    for name in ("sft", "dpo", "routing"):
        shutil.copytree(tiny_run / name, tmp_path / name)
    overrides = [f"output_dir={tmp_path}", "export.merge=false", "hub.push=true", "hub.repo_id=org/from-recipe"]
    recipe = load_recipe(tmp_path / "dpo" / "recipe.yaml", overrides)
    result = finish_run(recipe, "dpo")
    assert result["hub"]["uploaded"] == len(list((tmp_path / "dpo").iterdir())) and "export" not in result
    assert_identical(hub, "org/from-recipe", tmp_path / "dpo")
    recipe = load_recipe(
        tmp_path / "dpo" / "recipe.yaml", [*overrides[:3], "hub.repo_id=org/merged", "hub.folder=merged"]
    )
    result = finish_run(recipe, "dpo")
    assert result["export"] == str((tmp_path / "final").resolve())
    assert_identical(hub, "org/merged", tmp_path / "final")
    assert "config.json" in uploaded(hub, "org/merged")
