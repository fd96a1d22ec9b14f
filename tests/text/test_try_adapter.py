"""Try (issue 23): base vs adapter answers after a tiny training run, both backends, the sampler, Stop, the CLI."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from textutil import HAS_LLAMA_CPP, needs_llama_cpp, text_config

from extension.cli import main
from extension.errors import UserError
from extension.jobs import JobBusyError
from extension.text.engine import train_text
from extension.text.generate import Sampling, generate_ids, next_token
from extension.text.try_adapter import generation_running, options_from_body, request_stop, try_adapter

CORPUS = ["the cat sat on the mat", "the dog ran to the mat"]
GREEDY = Sampling(max_new_tokens=6)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """(F32 base, GGUF adapter, PEFT folder) of a 30-step run on two sentences."""
    root = tmp_path_factory.mktemp("try")
    data = root / "corpus.txt"
    data.write_text("\n".join(CORPUS) + "\n")
    result = train_text(text_config(tiny["F32"], data, root / "out"))
    assert result.status == "done"
    return tiny["F32"], root / "out" / "tl.gguf", root / "out" / "tl"


def test_greedy_adapter_follows_the_corpus_base_does_not(trained):
    base, adapter, peft = trained
    result = try_adapter(base, adapter, "the cat", sampling=GREEDY, backend="torch")
    assert result.backend == "torch" and not result.stopped
    assert result.adapter.strip().startswith("sat on the mat"), result.adapter
    assert result.base != result.adapter and not result.base.strip().startswith("sat on")
    dog = try_adapter(base, adapter, "the dog", sampling=GREEDY, backend="torch")
    assert dog.adapter.strip().startswith("ran to the mat"), dog.adapter
    # The PEFT folder of the same run gives the same tokens; scale 0 is the base alone.
    assert try_adapter(base, peft, "the cat", sampling=GREEDY, backend="torch").adapter_ids == result.adapter_ids
    off = try_adapter(base, adapter, "the cat", scale=0.0, sampling=GREEDY, backend="torch")
    assert off.adapter_ids == off.base_ids == result.base_ids


def test_same_seed_same_sampled_answers(trained):
    base, adapter, _ = trained
    hot = Sampling(max_new_tokens=4, temperature=1.5, top_k=0, top_p=1.0, seed=7)
    first = try_adapter(base, adapter, "the", sampling=hot, backend="torch")
    again = try_adapter(base, adapter, "the", sampling=hot, backend="torch")
    assert (first.base_ids, first.adapter_ids) == (again.base_ids, again.adapter_ids)
    others = [try_adapter(base, adapter, "the", sampling=Sampling(4, 1.5, 0, 1.0, seed), backend="torch").base_ids
              for seed in (8, 9)]
    assert any(ids != first.base_ids for ids in others)


def test_chat_uses_the_template(trained):
    base, adapter, _ = trained
    result = try_adapter(base, adapter, "the dog", chat=True, system="be brief",
                         sampling=Sampling(max_new_tokens=2), backend="torch")
    assert result.prompt == "### System:\nbe brief\n\n### User:\nthe dog\n\n### Assistant:\n"


def test_sampler_rules():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.5, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert next_token(logits, Sampling(temperature=0.0), gen) == 1
    assert {next_token(logits, Sampling(temperature=1.0, top_k=1), gen) for _ in range(20)} == {1}
    assert {next_token(logits, Sampling(temperature=5.0, top_k=2, top_p=1.0), gen) for _ in range(200)} == {1, 3}
    # top-p keeps the smallest head whose mass reaches p (on the untempered probabilities, as llama.cpp)
    probs = torch.softmax(logits, 0)
    assert probs[1] < 0.6 < probs[1] + probs[3]
    assert {next_token(logits, Sampling(temperature=5.0, top_k=0, top_p=0.6), gen) for _ in range(200)} == {1, 3}
    counts = np.bincount([next_token(logits, Sampling(temperature=1.0, top_k=0, top_p=1.0), gen)
                          for _ in range(3000)], minlength=5) / 3000
    assert np.abs(counts - probs.numpy()).max() < 0.04
    for bad in (Sampling(max_new_tokens=0), Sampling(temperature=-1), Sampling(top_p=0.0), Sampling(seed=-1)):
        with pytest.raises(UserError):
            bad.check()


def test_stop_ends_generation_with_the_tokens_so_far(trained):
    base, adapter, _ = trained
    calls = []
    model = torch.nn.Module()
    model.register_buffer("anchor", torch.zeros(1))
    model.forward = lambda ids: torch.nn.functional.one_hot(ids % 7, 300).float()  # any logits
    new, stopped = generate_ids(model, [1, 2], Sampling(max_new_tokens=50), set(), lambda: len(calls) > 2 or
                                calls.append(1))
    assert stopped and len(new) == 3
    assert request_stop() is False  # nothing runs
    assert _stopped_early(base, adapter, "torch")


def _stopped_early(base, adapter, backend: str) -> bool:
    """Stop pressed as soon as a generation holds the slot: it ends at once, reports stopped, frees the slot."""
    results = {}
    runner = threading.Thread(target=lambda: results.update(r=try_adapter(
        base, adapter, "the", sampling=Sampling(max_new_tokens=100), backend=backend)))
    runner.start()
    while not generation_running() and runner.is_alive():
        time.sleep(0.001)
    assert request_stop() is True
    runner.join(60)
    result = results["r"]
    return result.stopped and len(result.base_ids) < 100 and result.adapter_ids == [] and not generation_running()


def test_refusals_name_the_problem(trained, tiny, tmp_path):
    base, adapter, _ = trained
    with pytest.raises(JobBusyError, match="training job is running"):
        try_adapter(base, adapter, "the", training_running=lambda: True)
    assert not generation_running()
    with pytest.raises(UserError, match="adapter scale must be between 0 and 2"):
        try_adapter(base, adapter, "the", scale=2.5)
    with pytest.raises(UserError, match="the prompt is empty"):
        try_adapter(base, adapter, "  ", backend="torch")
    with pytest.raises(UserError, match="not a GGUF base"):
        try_adapter(tiny["ggml-F32"], adapter, "the")
    with pytest.raises(UserError, match="is a LoRA adapter, not a base model"):
        try_adapter(adapter, adapter, "the")
    with pytest.raises(UserError, match="adapter not found"):
        try_adapter(base, tmp_path / "nope.gguf", "the")
    with pytest.raises(UserError, match="backend 'vllm'"):
        try_adapter(base, adapter, "the", backend="vllm")


def test_an_adapter_that_does_not_fit_never_reaches_llama_cpp(trained, tmp_path):
    """llama.cpp segfaults on such a file; it is refused by the check against the base first (any backend)."""
    from extension._converters import converters

    base, _, _ = trained
    rng = np.random.default_rng(0)
    module = converters.LoraModule(down=rng.standard_normal((4, 48)).astype(np.float32),  # the layer takes 64
                                   up=rng.standard_normal((32, 4)).astype(np.float32), alpha=4.0)
    bad = converters.save_adapter(converters.LoraAdapter({"model.layers.0.self_attn.v_proj": module}, arch="llama"),
                                  tmp_path / "bad.gguf", to="gguf")
    for backend in ("auto", "torch"):
        with pytest.raises(UserError, match="does not fit the base tiny-f32.gguf: .*v_proj"):
            try_adapter(base, bad, "the", backend=backend)


def test_rest_body_keys():
    options = options_from_body({"base": "b.gguf", "lora": "a.gguf", "prompt": "hi", "scale": 0.5, "max_tokens": 9,
                                 "temperature": 0.7, "seed": 3, "chat": True})
    assert options["adapter"] == "a.gguf" and options["scale"] == 0.5 and options["chat"] is True
    assert options["sampling"] == Sampling(max_new_tokens=9, temperature=0.7, seed=3)
    with pytest.raises(UserError, match="unknown key 'max_new_tokens'"):
        options_from_body({"base": "b", "lora": "a", "prompt": "p", "max_new_tokens": 3})
    with pytest.raises(UserError, match='"max_tokens" must be a int'):
        options_from_body({"base": "b", "lora": "a", "prompt": "p", "max_tokens": 2.5})
    with pytest.raises(UserError, match='needs "lora"'):
        options_from_body({"base": "b", "prompt": "p"})


def test_cli_generate_prints_both_answers_and_exit_codes(trained, tmp_path, capsys):
    base, adapter, _ = trained
    code = main(["generate", "--base", str(base), "--lora", str(adapter), "-p", "the cat", "--max-tokens", "6",
                 "--backend", "torch"])
    out = capsys.readouterr().out
    assert code == 0 and "backend: torch" in out, out
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["adapter (scale 1)"].strip().startswith("sat on the mat") and "sat on the mat" not in lines["base"]
    assert main(["generate", "--base", str(base), "--lora", str(tmp_path / "x.gguf"), "-p", "the"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapter not found" in err
    assert main(["generate", "--base", str(base), "--lora", str(adapter), "-p", "a", "--scale", "3"]) == 2
    assert main(["generate", "--base", str(base), "--lora", str(adapter), "-p", "a", "--temperature", "-1"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--base", str(base), "--lora", str(adapter)])  # no prompt: argparse, exit 2
    assert exc.value.code == 2
    if not HAS_LLAMA_CPP:
        assert main(["generate", "--base", str(base), "--lora", str(adapter), "-p", "a", "--backend",
                     "llama.cpp"]) == 2
        assert "needs llama-cpp-python" in capsys.readouterr().err


@needs_llama_cpp
@pytest.mark.llama_cpp
def test_llama_cpp_and_torch_give_the_same_greedy_tokens(trained):
    base, adapter, peft = trained
    sampling = Sampling(max_new_tokens=8)
    for prompt in ("the cat", "the dog", "a"):
        cpp = try_adapter(base, adapter, prompt, sampling=sampling, backend="llama.cpp")
        own = try_adapter(base, adapter, prompt, sampling=sampling, backend="torch")
        assert cpp.backend == "llama.cpp" and own.backend == "torch"
        assert (cpp.base_ids, cpp.adapter_ids) == (own.base_ids, own.adapter_ids), prompt
    assert try_adapter(base, adapter, "the cat", sampling=sampling).backend == "llama.cpp"  # auto
    half = try_adapter(base, peft, "the cat", scale=0.5, sampling=sampling, backend="llama.cpp")  # PEFT -> GGUF
    assert half.adapter_ids == try_adapter(base, adapter, "the cat", scale=0.5, sampling=sampling,
                                           backend="torch").adapter_ids
    hot = Sampling(max_new_tokens=6, temperature=1.0, seed=11)
    assert try_adapter(base, adapter, "the", sampling=hot).base_ids == try_adapter(base, adapter, "the",
                                                                                     sampling=hot).base_ids


@needs_llama_cpp
@pytest.mark.llama_cpp
def test_llama_cpp_stop_kills_the_child(trained):
    base, adapter, _ = trained
    assert _stopped_early(base, adapter, "llama.cpp")
