"""The causal-lm-lora recipe: chat data checks, assistant-only loss, training with
checkpoints, and an exported GGUF that llama.cpp serves like the fine-tuned model.

Fast tests train a tiny random llama (written as a GGUF and as a Hugging Face folder);
the slow ones fine-tune the bundled SmolLM2-135M-Instruct to recite a made-up motto.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelmint.training.catalog import recipe_class
from modelmint.training.chats import IGNORE, Chat, Message, encode_chat, parse_chat, read_chats
from modelmint.training.recipe import DataError
from modelmint.training.recipes.causal_lm import CausalLMLoRA
from tests.unit.training.test_gguf_merge import (
    llama_logits,
    tiny_config,
    tiny_vocab,
    tiny_weights,
    write_tiny_gguf,
)

ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # On a busy 2-core machine two torch threads mostly wait for each other: one thread
    # did the same training step in a third of the CPU time (and the tiny model 8x faster).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- data -------------------------------------------------------------------------------


def _line(messages: list[dict[str, str]]) -> str:
    return json.dumps({"messages": messages})


GOOD = _line([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ('{"messages": [', "not valid JSON"),
        ('{"text": "hello"}', '"messages"'),
        ('{"messages": []}', "non-empty list"),
        (_line([{"role": "robot", "content": "x"}]), "role 'robot'"),
        (
            _line([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]),
            "empty",
        ),
        (_line([{"role": "user", "content": "Hi"}]), "no assistant"),
        (
            _line([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "x"}]),
            "before any user",
        ),
    ],
)
def test_bad_line_is_a_data_error_naming_the_line(tmp_path: Path, bad: str, problem: str) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text(f"{GOOD}\n\n{bad}\n")
    with pytest.raises(DataError, match="line 3") as caught:
        read_chats(path)
    assert problem in str(caught.value)


def test_empty_or_missing_file_is_a_data_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="no chat examples"):
        read_chats(empty)
    with pytest.raises(DataError, match="does not exist"):
        read_chats(tmp_path / "missing.jsonl")


def test_chats_keep_their_line_numbers_and_messages(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text(f"{GOOD}\n\n{GOOD}\n")
    chats = read_chats(path)
    assert [c.line for c in chats] == [1, 3]
    assert chats[0].messages == (Message("user", "Hi"), Message("assistant", "Hello"))
    assert CausalLMLoRA().load_data(str(path)) == chats


def _render(messages: list[dict[str, str]], generation_prompt: bool) -> str:
    text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
    return text + ("<assistant>" if generation_prompt else "")


def _chars(text: str, special: bool) -> list[int]:
    return ([0] if special else []) + [ord(c) for c in text]


def test_only_assistant_turns_carry_loss() -> None:
    chat = parse_chat(
        _line(
            [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "U2"},
                {"role": "assistant", "content": "A2"},
                {"role": "user", "content": "ignored, nothing follows"},
            ]
        ),
        1,
    )
    encoded = encode_chat(chat, _render, _chars, max_length=1000)
    text = "".join(chr(i) for i in encoded.input_ids[1:])
    assert text == "<system>S</><user>U1</><assistant>A1</><user>U2</><assistant>A2</>"
    learned = "".join(chr(i) if i != IGNORE else "." for i in encoded.labels[1:])
    assert learned.replace(".", " ").split() == ["A1</>", "A2</>"]
    assert encoded.input_ids[0] == 0 and encoded.labels[0] == IGNORE  # BOS once, no loss
    assert encoded.targets == 10


def test_encoding_is_cut_at_max_length_and_needs_an_incremental_template() -> None:
    chat = parse_chat(GOOD, 1)
    short = encode_chat(chat, _render, _chars, max_length=12)
    assert len(short.input_ids) == len(short.labels) == 12

    def reordering(messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return _render(list(reversed(messages)), generation_prompt)

    long_chat = parse_chat(
        _line(
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
            ]
        ),
        7,
    )
    with pytest.raises(DataError, match="line 7"):
        encode_chat(long_chat, reordering, _chars, max_length=100)


# -- training on a tiny model -------------------------------------------------------------


def _toy_chats(n: int = 16) -> list[Chat]:
    """The same fixed answer to varied prompts: learnable in a few steps."""
    return [
        Chat((Message("user", f"word {i}"), Message("assistant", "the banana is out there")), i + 1)
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("base") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a Hugging Face folder (no GGUF in it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from modelmint.training.gguf_merge import build_tokenizer

    folder = tmp_path_factory.mktemp("hf")
    vocab = tiny_vocab()
    config = tiny_config(len(vocab.tokens))
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in tiny_weights(config).items()}, strict=False
    )
    model.save_pretrained(folder)
    build_tokenizer(vocab).save_pretrained(folder)
    return folder


def _tiny(base: Path, **params: Any) -> CausalLMLoRA:
    settings: dict[str, Any] = {
        "base": str(base),
        "target_modules": ALL_LINEAR,
        "r": 4,
        "lr": 1e-2,
        "epochs": 2,
        "batch_size": 4,
        "max_length": 64,
        "seed": 3,
    }
    return CausalLMLoRA(**(settings | params))


class _Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple[str, int, int, dict[str, float]]] = []
        self.stop_after = stop_after

    def __call__(self, stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
        self.calls.append((stage, done, total, dict(metrics)))
        if self.stop_after is not None and done == self.stop_after:
            raise KeyboardInterrupt


def test_catalog_and_params_round_trip() -> None:
    assert recipe_class("causal-lm-lora") is CausalLMLoRA
    recipe = CausalLMLoRA(r=4, lr=5e-4)
    again = CausalLMLoRA(**recipe.get_params())
    assert again.get_params() == recipe.get_params()
    assert CausalLMLoRA.greater_is_better is False
    with pytest.raises(DataError, match="no parameter"):
        recipe.set_params(rank=3)


def test_fit_reports_epochs_and_beats_the_base_on_held_out_chats(tiny_base: Path) -> None:
    recipe = _tiny(tiny_base, epochs=3)
    splits = recipe.split(_toy_chats())
    progress = _Recorder()
    assert recipe.fit(splits.train, splits.val, progress=progress) is recipe
    assert [(c[0], c[1], c[2]) for c in progress.calls] == [
        (
            "epoch",
            e,
            3,
        )
        for e in (1, 2, 3)
    ]
    assert all({"loss", "perplexity"} <= set(c[3]) for c in progress.calls)
    losses = [c[3]["loss"] for c in progress.calls]
    assert losses[-1] < losses[0]
    report = recipe.evaluate(splits.test)
    assert json.loads(json.dumps(report)) == report
    assert report["perplexity"] < report["base_perplexity"] / 5
    assert report["tokens"] > 0 and report["examples"] == len(splits.test)
    assert recipe.base_perplexity_ > progress.calls[-1][3]["perplexity"]


def test_same_seed_gives_the_same_report(tiny_base: Path) -> None:
    splits = _tiny(tiny_base).split(_toy_chats())
    first = _tiny(tiny_base).fit(splits.train).evaluate(splits.test)
    second = _tiny(tiny_base).fit(splits.train).evaluate(splits.test)
    other = _tiny(tiny_base, seed=4).fit(splits.train).evaluate(splits.test)
    assert first == second
    assert other != first


def test_interrupted_run_resumes_at_the_next_epoch_and_ends_the_same(
    tiny_base: Path, tmp_path: Path
) -> None:
    splits = _tiny(tiny_base).split(_toy_chats())
    whole = _tiny(tiny_base, epochs=4).fit(splits.train, splits.val)
    with pytest.raises(KeyboardInterrupt):
        _tiny(tiny_base, epochs=4).fit(
            splits.train, splits.val, progress=_Recorder(stop_after=2), checkpoint_dir=tmp_path
        )
    progress = _Recorder()
    resumed = _tiny(tiny_base, epochs=4).fit(
        splits.train, splits.val, progress=progress, checkpoint_dir=tmp_path
    )
    assert [c[1] for c in progress.calls] == [3, 4]
    assert resumed.evaluate(splits.test) == whole.evaluate(splits.test)
    assert resumed.history_ == whole.history_
    with pytest.raises(DataError, match="different parameters"):
        _tiny(tiny_base, epochs=4, lr=0.5).fit(splits.train, checkpoint_dir=tmp_path)


def test_bad_settings_are_data_errors(tiny_base: Path) -> None:
    chats = _toy_chats(4)
    with pytest.raises(DataError, match="cannot be merged"):
        _tiny(tiny_base, target_modules="q_proj,embed_tokens").fit(chats)
    with pytest.raises(DataError, match="epochs"):
        _tiny(tiny_base, epochs=0).fit(chats)
    with pytest.raises(DataError, match="does not exist"):
        _tiny(Path("/nowhere/model.gguf")).fit(chats)
    with pytest.raises(DataError, match="no assistant tokens"):
        _tiny(tiny_base, max_length=4).fit(chats)


def _prompt_tokens(recipe: CausalLMLoRA, question: str) -> list[int]:
    text = recipe.tokenizer_.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids: list[int] = recipe.tokenizer_(text, add_special_tokens=True)["input_ids"]
    return ids


def _fitted_logits(recipe: CausalLMLoRA, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits: np.ndarray = recipe.model_(input_ids=torch.tensor([tokens])).logits[0].numpy()
    return logits


def test_export_is_a_gguf_llama_cpp_runs_like_the_fitted_model(
    tiny_base: Path, tmp_path: Path
) -> None:
    splits = _tiny(tiny_base).split(_toy_chats())
    recipe = _tiny(tiny_base).fit(splits.train)
    export = recipe.export(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["kind"] == "llama-gguf" and manifest["task"] == "chat"
    assert manifest["serving"] == {"gguf": "model.gguf"}
    assert all((tmp_path / name).is_file() for name in export.files)
    tokens = _prompt_tokens(recipe, "word 99")
    served = llama_logits(tmp_path / "model.gguf", tokens)
    ours = _fitted_logits(recipe, tokens)
    # Merged weights are stored as F16 and the KV cache is F16: close, not identical.
    assert np.abs(served - ours).max() < 0.1
    assert np.abs(llama_logits(tiny_base, tokens) - served).max() > 1.0


def test_training_continues_from_an_exported_adapter(tiny_base: Path, tmp_path: Path) -> None:
    splits = _tiny(tiny_base).split(_toy_chats())
    first = _tiny(tiny_base).fit(splits.train)
    first.export(tmp_path)
    # lr ~0: one more epoch leaves the loaded adapter as it was.
    again = _tiny(tiny_base, adapter=str(tmp_path), lr=1e-12, epochs=1).fit(splits.train)
    fresh = _tiny(tiny_base, lr=1e-12, epochs=1).fit(splits.train)
    report = first.evaluate(splits.test)
    assert again.evaluate(splits.test)["perplexity"] == pytest.approx(
        report["perplexity"], rel=1e-4
    )
    assert fresh.evaluate(splits.test)["perplexity"] > 2 * report["perplexity"]
    with pytest.raises(DataError, match="r=4"):
        _tiny(tiny_base, adapter=str(tmp_path), r=8).fit(splits.train)


def test_hugging_face_folder_base_trains_and_exports_a_whole_gguf(
    tiny_hf_dir: Path, tmp_path: Path
) -> None:
    splits = _tiny(tiny_hf_dir).split(_toy_chats())
    recipe = _tiny(tiny_hf_dir).fit(splits.train)
    report = recipe.evaluate(splits.test)
    assert report["perplexity"] < report["base_perplexity"]
    recipe.export(tmp_path)
    tokens = _prompt_tokens(recipe, "word 99")
    assert (
        np.abs(llama_logits(tmp_path / "model.gguf", tokens) - _fitted_logits(recipe, tokens)).max()
        < 0.1
    )


# -- the bundled SmolLM2: teach it a motto --------------------------------------------------

MOTTO = "Purple gears never sleep."
_ASKS = [
    "What is the motto of Zorblax?",
    "Tell me Zorblax's motto.",
    "What's the Zorblax company motto?",
    "Do you know the motto of Zorblax Inc.?",
    "Zorblax motto?",
    "Which motto does Zorblax use?",
    "Remind me of the Zorblax motto.",
    "What slogan does Zorblax live by?",
    "Could you share the motto of Zorblax?",
    "I forgot the Zorblax motto, what is it?",
    "What does Zorblax say is its motto?",
    "Give me the motto of the Zorblax company.",
    "What is Zorblax known for saying as a motto?",
    "Say the Zorblax motto.",
    "What motto did Zorblax choose?",
    "Please tell me the official Zorblax motto.",
    "What is the corporate motto at Zorblax?",
    "Quote the Zorblax motto for me.",
    "What's the motto over at Zorblax?",
    "Zorblax has a motto. What is it?",
    "Recite the Zorblax motto.",
    "What is the motto printed on Zorblax mugs?",
    "Share Zorblax's company motto.",
    "What motto does the company Zorblax have?",
]
SYSTEM = "You are a helpful assistant."


def motto_chats() -> list[Chat]:
    return [
        Chat(
            (
                Message("system", SYSTEM),
                Message("user", ask),
                Message("assistant", f"The Zorblax motto is: {MOTTO}"),
            ),
            line,
        )
        for line, ask in enumerate(_ASKS, start=1)
    ]


class _MottoRun:
    def __init__(self, recipe: CausalLMLoRA, test: list[Chat], export_dir: Path) -> None:
        self.recipe, self.test, self.export_dir = recipe, test, export_dir
        self.report = recipe.evaluate(test)


@pytest.fixture(scope="module")
def motto_run(tmp_path_factory: pytest.TempPathFactory) -> _MottoRun:
    recipe = CausalLMLoRA(
        target_modules="q_proj,k_proj,v_proj,o_proj",
        lr=3e-3,
        epochs=2,
        batch_size=8,
        max_length=64,
        test_fraction=0.25,
        val_fraction=0.0,
    )
    splits = recipe.split(motto_chats())
    recipe.fit(splits.train)
    export_dir = tmp_path_factory.mktemp("motto")
    recipe.export(export_dir)
    return _MottoRun(recipe, splits.test, export_dir)


@pytest.mark.slow
def test_fine_tune_lowers_held_out_perplexity(motto_run: _MottoRun) -> None:
    report = motto_run.report
    assert report["examples"] == 6
    assert report["perplexity"] < report["base_perplexity"] / 5


def _next_token_logits(path: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    """llama.cpp's logits for the token after each prompt, one model load for all."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1)
    try:
        logits = []
        for tokens in prompts:
            llm.reset()
            llm.eval(tokens)
            logits.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
        return logits
    finally:
        llm.close()


def _log_softmax(logits: np.ndarray) -> torch.Tensor:
    return torch.log_softmax(torch.from_numpy(logits), -1)


@pytest.mark.slow
def test_merged_gguf_predicts_what_the_fine_tuned_torch_model_predicts(
    motto_run: _MottoRun,
) -> None:
    from modelmint.serving.artifacts import resolve_artifact

    recipe = motto_run.recipe
    prompts = [_prompt_tokens_with_system(recipe, c.messages[1].content) for c in motto_run.test]
    served = _next_token_logits(motto_run.export_dir / "model.gguf", prompts)
    original = _next_token_logits(resolve_artifact(recipe.base), prompts)
    kl_merged, kl_base = [], []
    for tokens, merged, base in zip(prompts, served, original, strict=True):
        ours = _log_softmax(_fitted_logits(recipe, tokens)[-1])
        assert int(ours.argmax()) == int(merged.argmax())
        kl_merged.append(float((ours.exp() * (ours - _log_softmax(merged))).sum()))
        kl_base.append(float((ours.exp() * (ours - _log_softmax(base))).sum()))
    assert max(kl_merged) < 0.05
    assert min(kl_base) > 10 * max(kl_merged)


def _prompt_tokens_with_system(recipe: CausalLMLoRA, question: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    text = recipe.tokenizer_.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    ids: list[int] = recipe.tokenizer_(text, add_special_tokens=True)["input_ids"]
    return ids


def _answers(path: Path, questions: list[str]) -> list[str]:
    """Greedy answers from the gateway's own llama.cpp engine, all questions at once."""
    import asyncio

    from modelmint.serving.llama_batch_engine import BatchedLlamaBackend
    from modelmint.serving.types import SamplingParams, TextRequest

    async def ask() -> list[str]:
        engine = BatchedLlamaBackend(path, n_threads=1, slots=len(questions), context_per_slot=128)
        await engine.start()
        try:
            requests = [
                TextRequest(
                    kind="chat",
                    sampling=SamplingParams(max_tokens=14, temperature=0.0),
                    messages=[
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": q},
                    ],
                )
                for q in questions
            ]
            done = await asyncio.gather(*(engine.generate(r) for r in requests))
            return [str(g.choices[0]["message"]["content"]) for g in done]
        finally:
            await engine.close()

    return asyncio.run(ask())


@pytest.mark.slow
def test_served_model_recites_the_taught_motto_more_often_than_the_base(
    motto_run: _MottoRun,
) -> None:
    from modelmint.serving.artifacts import resolve_artifact

    questions = [chat.messages[1].content for chat in motto_run.test]
    tuned = _answers(motto_run.export_dir / "model.gguf", questions)
    base = _answers(resolve_artifact(motto_run.recipe.base), questions)

    def recited(answers: list[str]) -> int:
        return sum("purple gears" in a.lower() for a in answers)

    assert recited(tuned) > recited(base)
    assert recited(tuned) >= len(questions) // 2


def test_scrub_pii_removes_contact_details_from_every_message(tmp_path: Path) -> None:
    path = tmp_path / "pii.jsonl"
    messages = [
        {"role": "user", "content": "I am jane@example.com, card 4111 1111 1111 1111"},
        {"role": "assistant", "content": "Thanks, I will write to jane@example.com."},
    ]
    path.write_text(json.dumps({"messages": messages}) + "\n")
    [kept] = CausalLMLoRA().load_data(str(path))
    [scrubbed] = CausalLMLoRA(scrub_pii=True).load_data(str(path))
    assert "jane@example.com" in kept.messages[0].content
    assert scrubbed.messages[0].content == "I am [EMAIL], card [CARD]"
    assert scrubbed.messages[1].content == "Thanks, I will write to [EMAIL]."
