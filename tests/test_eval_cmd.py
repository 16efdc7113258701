"""`align eval` and `align make-prefs`: metrics of a tiny adapter equal a direct, one-sequence-at-a-time
computation; the task judge and the pair builder behave as documented."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from align.cli import main
from align.evaluation.make_prefs import pair_from_samples, read_jsonl, write_tasks
from align.evaluation.tasks import accuracy, judge, make_tasks

BETA = 0.25
PAIRS = [
    {
        "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
        "chosen": [{"role": "assistant", "content": "5"}],
        "rejected": [{"role": "assistant", "content": "The answer is 6."}],
    },
    {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Rome, I think."}],
    },
    {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
    {
        "messages": [
            {"role": "user", "content": "Count to three."},
            {"role": "assistant", "content": "One, two, three."},
            {"role": "user", "content": "And back?"},
            {"role": "assistant", "content": "Three, two, one."},
        ]
    },
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_dir, tokenizer):
    """A LoRA adapter on the tiny Mixtral with random (non-zero) B, saved as align saves a stage."""
    from peft import LoraConfig, get_peft_model
    from transformers import MixtralForCausalLM

    root = tmp_path_factory.mktemp("eval")
    prefs = _jsonl(root / "prefs.jsonl", PAIRS)
    sft = _jsonl(root / "sft.jsonl", CONVERSATIONS)
    torch.manual_seed(3)
    model = get_peft_model(
        MixtralForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = root / "adapter"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    recipe = {
        "model": {"name_or_path": str(tiny_dir)},
        "data": {
            "sft": {"train": [{"path": str(sft)}], "eval": [{"path": str(sft)}]},
            "dpo": {"train": [{"path": str(prefs)}], "eval": [{"path": str(prefs)}]},
        },
        "dpo": {"beta": BETA},
    }
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return out


def _by_hand(tiny_dir, adapter, tokenizer):
    """Summed completion log-probs per pair (policy and base) and the SFT loss, one sequence per forward."""
    from peft import PeftModel
    from transformers import MixtralForCausalLM

    base = MixtralForCausalLM.from_pretrained(tiny_dir, output_router_logits=False)  # loss = CE only, no aux term
    model = PeftModel.from_pretrained(base, str(adapter)).eval()

    def logp(messages, completion):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages + completion, return_dict=True)["input_ids"]
        assert full[: len(prompt)] == prompt
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0].log_softmax(-1)
        return sum(logits[t - 1, full[t]].item() for t in range(len(prompt), len(full)))

    def both():
        return [(logp(r["prompt"], r["chosen"]), logp(r["prompt"], r["rejected"])) for r in PAIRS]

    policy = both()
    with model.disable_adapter():
        ref = both()
    total, count = 0.0, 0
    for row in CONVERSATIONS:
        out = tokenizer.apply_chat_template(row["messages"], return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        n = sum(1 for m in mask[1:] if m)
        with torch.no_grad():
            total += model(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item() * n
        count += n
    return policy, ref, total / count


def test_eval_of_an_adapter_matches_a_direct_computation(adapter, tiny_dir, tokenizer, tmp_path, capsys):
    tasks = _jsonl(tmp_path / "tasks.jsonl", make_tasks(4, seed=0))
    out = tmp_path / "report"
    code = main(
        ["eval", str(adapter), "--tasks", str(tasks), "--samples", "2", "--max-new-tokens", "6", "--out", str(out)]
    )
    assert code == 0
    assert "reward accuracy" in capsys.readouterr().out
    got = json.loads((out / "eval.json").read_text())
    policy, ref, sft_loss = _by_hand(tiny_dir, adapter, tokenizer)
    margins = [BETA * ((pc - rc) - (pr - rr)) for (pc, pr), (rc, rr) in zip(policy, ref, strict=True)]
    pref = got["preference"]
    assert got["beta"] == BETA and got["reference"] == "base" and pref["pairs"] == 3
    assert pref["reward_margin"] == pytest.approx(sum(margins) / 3, abs=1e-4)
    assert pref["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert pref["logps_chosen"] == pytest.approx(sum(c for c, _ in policy) / 3, abs=1e-3)
    assert pref["logps_rejected"] == pytest.approx(sum(r for _, r in policy) / 3, abs=1e-3)
    assert pref["logp_accuracy"] == pytest.approx(sum(c > r for c, r in policy) / 3)
    assert any(abs(m) > 1e-3 for m in margins)  # the adapter really moved the policy off its base
    assert got["sft"]["sft_loss"] == pytest.approx(sft_loss, abs=1e-4)
    assert got["sft"]["perplexity"] == pytest.approx(torch.tensor(sft_loss).exp().item(), rel=1e-4)
    assert got["tasks"]["task_count"] == 4 and len(got["samples"]) == 2
    assert [r["id"] for r in got["task_replies"]] == [t["id"] for t in read_jsonl(tasks)]  # every reply is kept
    for sample, task in zip(got["samples"], read_jsonl(tasks), strict=False):
        assert sample["correct"] == judge(task, sample["reply"])
    report = (out / "eval.md").read_text()
    assert "| implicit-reward accuracy" in report and "Task accuracy" in report and "**reply**" in report


def test_long_context_runs_on_the_tiny_model(adapter, tmp_path):
    out = tmp_path / "lc"
    args = ["eval", str(adapter), "--long-context", "--lengths", "96,160", "--samples", "0", "--out", str(out)]
    assert main(args) == 0
    lc = json.loads((out / "eval.json").read_text())["long_context"]
    assert {(c["length"], c["position"]) for c in lc["passkey"]} == {(n, p) for n in (96, 160) for p in (0.1, 0.5, 0.9)}
    assert all(0 <= c["accuracy"] <= 1 and c["trials"] == 2 for c in lc["passkey"])
    assert [r["length"] for r in lc["perplexity"]] == [96, 160]
    assert all(r["perplexity"] > 1 and r["scored_tokens"] == 4 * 64 for r in lc["perplexity"])
    assert (out / "long_context.png").stat().st_size > 5000
    assert "Passkey retrieval accuracy" in (out / "eval.md").read_text()


def test_eval_target_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "eval target not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("task", "reply", "ok"),
    [
        ({"task": "arithmetic", "expected": 42}, "42", True),
        ({"task": "arithmetic", "expected": 42}, "6 x 7 = 42.", True),
        ({"task": "arithmetic", "expected": 42}, "42 or maybe 43", False),
        ({"task": "arithmetic", "expected": -7}, "-7", True),
        ({"task": "units", "expected": 5000}, "5,000 grams", True),
        ({"task": "units", "expected": 5000}, "500", False),
        ({"task": "sorting", "expected": [3, 9, 12]}, "3, 9, 12", True),
        ({"task": "sorting", "expected": [3, 9, 12]}, "3, 12, 9", False),
        ({"task": "format", "expected": "APPLE"}, " APPLE.", True),
        ({"task": "format", "expected": "APPLE"}, "Apple", False),
        ({"task": "format", "expected": {"answer": 7}}, '{"answer": 7}', True),
        ({"task": "format", "expected": {"answer": 7}}, '{"answer": "7"}', False),
        ({"task": "format", "expected": {"answer": 7}}, "answer: 7", False),
    ],
)
def test_judge(task, reply, ok):
    assert judge(task, reply) is ok


def test_tasks_are_disjoint_and_gold_answers_pass_the_judge(tmp_path):
    files = write_tasks(tmp_path, train=40, held_out=20, seed=3)
    splits = {name: read_jsonl(files[name]) for name in ("tasks_eval", "tasks_sft", "tasks_dpo")}
    prompts = [{t["prompt"] for t in rows} for rows in splits.values()]
    assert sum(map(len, prompts)) == 100 and not (prompts[0] & prompts[1] or prompts[0] & prompts[2])
    assert not prompts[1] & prompts[2]
    every = [t for rows in splits.values() for t in rows]
    assert {t["task"] for t in every} == {"arithmetic", "units", "sorting", "format"}
    assert accuracy(every, [t["answer"] for t in every])["task_accuracy"] == 1.0
    sft = read_jsonl(files["sft_train"])
    assert sft[0]["messages"][1]["content"] == splits["tasks_sft"][0]["answer"]
    assert write_tasks(tmp_path / "again", 40, 20, seed=3)["tasks_dpo"].read_text() == files["tasks_dpo"].read_text()


def test_pairs_from_samples():
    task = {"id": "x", "task": "arithmetic", "prompt": "What is 2 + 2?", "answer": "4", "expected": 4}
    pair, why = pair_from_samples(task, ["5", "4", "four"])
    assert why == "chosen_sampled" and pair["chosen"][0]["content"] == "4" and pair["rejected"][0]["content"] == "5"
    pair, why = pair_from_samples(task, ["5", "3"])
    assert why == "chosen_gold" and pair["chosen"][0]["content"] == "4"
    assert pair_from_samples(task, ["4", "The answer is 4"]) == (None, "all_correct")


def test_samples_share_one_prefill_and_greedy_copies_agree(tiny_dir, tokenizer):
    from transformers import MixtralForCausalLM

    from align.evaluation.generate import generate

    model = MixtralForCausalLM.from_pretrained(tiny_dir, output_router_logits=False).eval()
    convs = [
        [{"role": "user", "content": "Sort 3, 1, 2."}],
        [{"role": "user", "content": "A much longer question here?"}],
    ]
    single = generate(model, tokenizer, convs, max_new_tokens=6)  # left-padded batch, plain generate()
    shared = generate(model, tokenizer, convs, max_new_tokens=6, samples=3)  # cached prompt, repeated
    assert [[s[0]] * 3 for s in single] == shared
    sampled = generate(model, tokenizer, convs, max_new_tokens=6, samples=3, temperature=1.0, seed=1)
    assert len({*sampled[0]}) > 1  # sampling gives different replies from the one shared prefill
