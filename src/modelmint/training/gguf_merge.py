"""Llama-architecture GGUF files as torch weights, and fine-tuned copies written back.

The chat model ships as a quantized GGUF (llama.cpp's format) and the gateway serves
GGUF files, so LoRA fine-tuning reads the base from one and writes the result as
another:

    base = read_llama_gguf(path)                  # config, float32 weights, vocabulary
    tokenizer = build_tokenizer(base.vocab)
    ... train LoRA adapters on a torch model built from base.weights ...
    merge_into_gguf(base.reader, out, deltas)     # deltas in Hugging Face names and layout

Two layouts meet here. llama.cpp's converter permutes the rows of the q and k
projections (it pairs rotary dimensions differently from Hugging Face), and
transformers undoes that when it loads a GGUF. Weights leave this module in the
Hugging Face layout and deltas come back in it; ``to_gguf_rows`` / ``from_gguf_rows``
are the one place that knows the permutation.

Merged tensors are written as F16 by default; every tensor no adapter touched is
copied byte for byte, in its original quantization. Measured on SmolLM2-135M with
random q/v adapters (weights moved ~3%), KL divergence of llama.cpp's next-token
distribution from the fine-tuned torch model's, and file size:

    unmerged base (Q4_1)        0.070            98 MB
    merged, requantized Q4_1    0.110  (worse than not merging: the delta is below
                                        a 4-bit step, so rounding scrambles it)
    merged as Q8_0              0.009           104 MB
    merged as F16               0.003           117 MB
    merged as F32               0.004           143 MB

llama.cpp's own kernels put the unchanged base 0.005 from torch, so F16 is as close
as serving gets; F32 only costs size. ``write_llama_gguf`` writes a whole model from
Hugging Face weights, for bases that come as a Hugging Face folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, TokenType, quants
from numpy.typing import NDArray

from modelmint.training.recipe import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "MERGE_TYPES",
    "GGUFVocab",
    "LlamaGGUF",
    "MergeReport",
    "build_tokenizer",
    "from_gguf_rows",
    "gguf_tensor_name",
    "merge_into_gguf",
    "open_gguf",
    "read_llama_gguf",
    "to_gguf_rows",
    "vocab_from_tokenizer",
    "write_llama_gguf",
]

Weights = dict[str, NDArray[np.float32]]

# How a merged tensor may be stored: exact-ish floats, or requantized ("base" keeps
# the base tensor's own type).
MERGE_TYPES = ("f32", "f16", "q8_0", "base")

# Hugging Face module suffix inside ``model.layers.{i}.`` -> GGUF name inside ``blk.{i}.``.
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(.+)")

# Pre-tokenizers whose llama.cpp splitting rules ``build_tokenizer`` reproduces:
# GPT-2's byte-level regex ("gpt-2"), and SmolLM's (the same after splitting digits one by one).
_BYTE_LEVEL_PRE = {"gpt-2": False, "smollm": True}


def gguf_tensor_name(hf_name: str) -> str:
    """The GGUF tensor holding a Hugging Face llama parameter; DataError for others."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    match = _HF_LAYER.fullmatch(hf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"blk.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    raise DataError(f"{hf_name} is not a llama weight this GGUF writer knows")


def _hf_tensor_name(gguf_name: str) -> str:
    for hf, gg in _GLOBAL_NAMES.items():
        if gg == gguf_name:
            return hf
    match = _GGUF_LAYER.fullmatch(gguf_name)
    if match:
        for hf, gg in _LAYER_NAMES.items():
            if gg == match.group(2):
                return f"model.layers.{match.group(1)}.{hf}"
    raise DataError(f"GGUF tensor {gguf_name} has no llama counterpart in transformers")


def to_gguf_rows(weight: NDArray[Any], n_head: int) -> NDArray[Any]:
    """Hugging Face q/k projection rows -> llama.cpp's order.

    Per head, Hugging Face keeps the two halves of the rotary dimensions apart
    (first half, then second); llama.cpp interleaves them pairwise.
    """
    rows = weight.shape[0]
    split = weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def from_gguf_rows(weight: NDArray[Any], n_head: int) -> NDArray[Any]:
    """llama.cpp's q/k projection rows -> Hugging Face order (inverse of ``to_gguf_rows``)."""
    rows = weight.shape[0]
    split = weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def _row_heads(gguf_name: str, config: Mapping[str, Any]) -> int | None:
    """Heads to (un)permute a tensor's rows by, or None when its rows keep their order."""
    if gguf_name.endswith(".attn_q.weight"):
        return int(config["num_attention_heads"])
    if gguf_name.endswith(".attn_k.weight"):
        return int(config["num_key_value_heads"])
    return None


@dataclass(frozen=True, slots=True)
class GGUFVocab:
    """The tokenizer a GGUF carries, as plain data."""

    model: str  # "gpt2" = byte-level BPE; "llama" = sentencepiece, ...
    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


@dataclass(frozen=True, slots=True)
class LlamaGGUF:
    """A llama GGUF read for training: what transformers needs to rebuild the model."""

    path: Path
    reader: GGUFReader
    config: dict[str, Any]  # LlamaConfig keyword arguments
    weights: Weights  # Hugging Face names and layout, float32
    vocab: GGUFVocab


def open_gguf(path: Path) -> GGUFReader:
    """Parse a GGUF file's header; DataError when it is not one."""
    try:
        return GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable GGUF file: {exc}") from exc


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _llama_config(reader: GGUFReader, vocab_size: int, tied: bool) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise DataError(
            f"{reader.data.filename}: only llama-architecture GGUF files can be "
            f"fine-tuned here, this one is {arch!r}"
        )
    if reader.fields.get("llama.rope.scaling.type") is not None:
        raise DataError(f"{reader.data.filename}: rope scaling is not supported")
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, "llama.attention.key_length", hidden // heads)),
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        },
        "tie_word_embeddings": tied,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }


def _vocab(reader: GGUFReader) -> GGUFVocab:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise DataError(f"{reader.data.filename} carries no tokenizer")
    return GGUFVocab(
        model=str(_field(reader, "tokenizer.ggml.model", "")),
        pre=str(_field(reader, "tokenizer.ggml.pre", "default")),
        tokens=list(tokens),
        token_types=[int(t) for t in _field(reader, "tokenizer.ggml.token_type", [])],
        merges=list(_field(reader, "tokenizer.ggml.merges", [])),
        bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        chat_template=_field(reader, "tokenizer.chat_template"),
    )


def read_llama_gguf(path: Path) -> LlamaGGUF:
    """Dequantize a llama GGUF into float32 weights in the Hugging Face layout.

    Several times faster than ``from_pretrained(gguf_file=...)`` (which parses the
    file twice and rebuilds its name map per tensor) and gives the same numbers.
    """
    reader = open_gguf(path)
    names = {t.name for t in reader.tensors}
    vocab = _vocab(reader)
    config = _llama_config(reader, len(vocab.tokens), tied="output.weight" not in names)
    weights: Weights = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            raise DataError(f"{path}: rope frequency tensors are not supported")
        value = quants.dequantize(tensor.data, tensor.tensor_type)
        # F32 tensors come back as views of the read-only file map; torch needs its own.
        value = np.require(value, dtype=np.float32, requirements=["C", "W"])
        heads = _row_heads(tensor.name, config)
        weights[_hf_tensor_name(tensor.name)] = (
            from_gguf_rows(value, heads) if heads is not None else value
        )
    return LlamaGGUF(path, reader, config, weights, vocab)


def _merge_pair(merge: str) -> tuple[str, str]:
    left, _, right = merge.partition(" ")
    return left, right


def build_tokenizer(vocab: GGUFVocab) -> PreTrainedTokenizerFast:
    """A transformers tokenizer that splits text exactly as llama.cpp does with ``vocab``.

    Covers byte-level BPE vocabularies (``gpt-2`` and ``smollm`` pre-tokenizers); for
    others it raises DataError, and the caller falls back to transformers' GGUF loader.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab.model != "gpt2" or vocab.pre not in _BYTE_LEVEL_PRE:
        raise DataError(f"no built-in tokenizer for {vocab.model}/{vocab.pre} vocabularies")
    bpe = models.BPE(
        vocab={token: i for i, token in enumerate(vocab.tokens)},
        merges=[_merge_pair(m) for m in vocab.merges],
    )
    tokenizer = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if _BYTE_LEVEL_PRE[vocab.pre]
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    # llama.cpp matches control and user-defined tokens verbatim before BPE runs.
    specials = [
        AddedToken(token, special=kind == TokenType.CONTROL, normalized=False)
        for token, kind in zip(vocab.tokens, vocab.token_types, strict=False)
        if kind in (TokenType.CONTROL, TokenType.USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in specials if t.special])
    tokenizer.add_tokens([t for t in specials if not t.special])

    def token(index: int | None) -> str | None:
        return vocab.tokens[index] if index is not None else None

    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=token(vocab.bos_id),
        eos_token=token(vocab.eos_id),
        pad_token=token(vocab.pad_id if vocab.pad_id is not None else vocab.eos_id),
        chat_template=vocab.chat_template,
        add_bos_token=vocab.add_bos,
    )


def vocab_from_tokenizer(tokenizer: PreTrainedTokenizerBase) -> GGUFVocab:
    """The GGUF form of a transformers byte-level BPE tokenizer (inverse of
    ``build_tokenizer``); DataError for tokenizers llama.cpp would split differently."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError("only fast (tokenizers-backed) tokenizers can be written to GGUF")
    state = json.loads(backend.to_str())
    model, pre = state.get("model") or {}, _pre_name(state.get("pre_tokenizer"))
    if model.get("type") != "BPE" or pre is None or state.get("normalizer") is not None:
        raise DataError(
            "only byte-level BPE tokenizers (GPT-2 or SmolLM style) can be written to GGUF"
        )
    ids: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    types = dict.fromkeys(ids, int(TokenType.NORMAL))
    for added in state.get("added_tokens") or []:
        ids[int(added["id"])] = added["content"]
        types[int(added["id"])] = int(
            TokenType.CONTROL if added["special"] else TokenType.USER_DEFINED
        )
    if sorted(ids) != list(range(len(ids))):
        raise DataError("the tokenizer's token ids have gaps, which GGUF cannot express")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a", add_special_tokens=True)["input_ids"]
    return GGUFVocab(
        model="gpt2",
        pre=pre,
        tokens=[ids[i] for i in range(len(ids))],
        token_types=[types[i] for i in range(len(ids))],
        merges=merges,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        add_bos=len(marked) > len(plain) and marked[0] == tokenizer.bos_token_id,
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    )


def _pre_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a tokenizers pre-tokenizer, when it is one it knows."""
    if pre is None:
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    if (
        pre.get("type") == "Sequence"
        and len(parts) == 2
        and parts[0].get("type") == "Digits"
        and parts[0].get("individual_digits")
        and _pre_name(parts[1]) == "gpt-2"
    ):
        return "smollm"
    return None


def _write_vocab(writer: GGUFWriter, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for add, value in (
        (writer.add_bos_token_id, vocab.bos_id),
        (writer.add_eos_token_id, vocab.eos_id),
        (writer.add_pad_token_id, vocab.pad_id),
    ):
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def write_llama_gguf(
    out: Path,
    config: Mapping[str, Any],
    weights: Mapping[str, NDArray[np.float32]],
    vocab: GGUFVocab,
    *,
    tensor_type: str = "f16",
) -> int:
    """Write a llama model given in Hugging Face names and layout (``LlamaConfig``
    fields in ``config``) as a GGUF llama.cpp loads; returns the file size.

    Matrices are stored as ``tensor_type`` (f32 or f16); norms always as F32, which
    llama.cpp requires. The inverse of ``read_llama_gguf``.
    """
    if tensor_type not in ("f32", "f16"):
        raise DataError(f"a new GGUF stores matrices as f32 or f16, not {tensor_type!r}")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    rope = config.get("rope_parameters") or {}
    writer = GGUFWriter(out, arch="llama")
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // heads))
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_file_type(1 if tensor_type == "f16" else 0)  # llama_ftype MOSTLY_F16 / ALL_F32
    _write_vocab(writer, vocab)
    layout = {
        "num_attention_heads": heads,
        "num_key_value_heads": config.get("num_key_value_heads") or heads,
    }
    for name, weight in weights.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reuses token_embd when there is no output tensor
        target = gguf_tensor_name(name)
        value = np.asarray(weight, dtype=np.float32)
        row_heads = _row_heads(target, layout)
        if row_heads is not None:
            value = to_gguf_rows(value, row_heads)
        stored = value.astype(np.float16) if value.ndim == 2 and tensor_type == "f16" else value
        writer.add_tensor(target, np.ascontiguousarray(stored))
    _finish(writer)
    return out.stat().st_size


def _finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@dataclass(frozen=True, slots=True)
class MergeReport:
    """What ``merge_into_gguf`` wrote."""

    path: Path
    merged: tuple[str, ...]  # GGUF names of the tensors replaced
    tensor_type: str  # how they were stored
    size_bytes: int
    base_size_bytes: int


def _metadata(reader: GGUFReader, writer: GGUFWriter) -> None:
    """Copy every key-value pair except the ones the writer derives itself."""
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        main = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if main == GGUFValueType.ARRAY else None
        if main == GGUFValueType.ARRAY and len(field.types) > 2:
            raise DataError(f"GGUF metadata {key} is a nested array, which cannot be copied")
        writer.add_key_value(key, field.contents(), main, sub)
    alignment = _field(reader, "general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment)


def _store(
    merged: NDArray[np.float32], base_type: GGMLQuantizationType, tensor_type: str
) -> tuple[NDArray[Any], GGMLQuantizationType | None]:
    """The bytes to write for a merged tensor and the raw type to declare for them."""
    if tensor_type == "f32":
        return merged, None
    if tensor_type == "f16":
        return merged.astype(np.float16), None
    target = GGMLQuantizationType.Q8_0 if tensor_type == "q8_0" else base_type
    if target in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return _store(merged, target, target.name.lower())
    return quants.quantize(merged, target), target


def merge_into_gguf(
    reader: GGUFReader,
    out: Path,
    deltas: Mapping[str, NDArray[np.float32]],
    *,
    tensor_type: str = "f16",
) -> MergeReport:
    """Write a copy of ``reader``'s GGUF to ``out`` with ``deltas`` added to its weights.

    ``deltas`` maps Hugging Face parameter names (``model.layers.0.self_attn.q_proj.weight``)
    to arrays in the Hugging Face layout, e.g. LoRA's ``scaling * B @ A``. All metadata
    (tokenizer, chat template, hyperparameters) and every other tensor are copied unchanged.
    """
    if tensor_type not in MERGE_TYPES:
        raise DataError(f"tensor_type must be one of {', '.join(MERGE_TYPES)}, not {tensor_type!r}")
    config = _llama_config(reader, 0, tied=False)
    wanted = {gguf_tensor_name(name): delta for name, delta in deltas.items()}
    missing = sorted(set(wanted) - {t.name for t in reader.tensors})
    if missing:
        raise DataError(f"the base GGUF has no tensor {', '.join(missing)} to merge into")
    writer = GGUFWriter(out, arch="llama")
    _metadata(reader, writer)
    for tensor in reader.tensors:
        delta = wanted.get(tensor.name)
        if delta is None:
            # Untouched tensors keep their quantization and bytes exactly.
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
            continue
        base = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        heads = _row_heads(tensor.name, config)
        step = np.asarray(delta, dtype=np.float32)
        if heads is not None:
            step = to_gguf_rows(step, heads)
        if step.shape != base.shape:
            raise DataError(f"delta for {tensor.name} has shape {step.shape}, not {base.shape}")
        data, raw = _store(base + step, tensor.tensor_type, tensor_type)
        writer.add_tensor(tensor.name, data, raw_dtype=raw)
    _finish(writer)
    return MergeReport(
        path=out,
        merged=tuple(sorted(wanted)),
        tensor_type=tensor_type,
        size_bytes=out.stat().st_size,
        base_size_bytes=Path(str(reader.data.filename)).stat().st_size,
    )
