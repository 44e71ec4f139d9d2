"""Build the backend object a deployment asks for."""

from __future__ import annotations

from typing import Any

from modelmint.config import Settings
from modelmint.errors import InvalidRequest
from modelmint.registry.catalog import DeploymentSpec
from modelmint.serving.artifacts import resolve_artifact
from modelmint.serving.backend import Backend
from modelmint.serving.remote import RemoteOpenAIBackend, RemoteSettings

__all__ = ["BACKENDS", "build_backend"]

BACKENDS = ("llama_cpp", "sentence_transformer", "onnx_embedding", "openai_remote")


def build_backend(spec: DeploymentSpec, settings: Settings) -> Backend:
    if spec.backend == "llama_cpp":
        config = spec.config
        flash_attn = config.get("flash_attn", True)
        if not isinstance(flash_attn, bool):
            raise InvalidRequest("flash_attn must be true or false", param="flash_attn")
        if config.get("engine", "batched") == "single":
            if "flash_attn" in config:
                raise InvalidRequest(
                    "flash_attn applies to the batched engine only", param="flash_attn"
                )
            # One request at a time: the reference the batched engine is tested against.
            from modelmint.serving.llama_cpp_engine import LlamaCppBackend

            return LlamaCppBackend(
                resolve_artifact(spec.artifact_uri),
                n_ctx=int(config.get("context", settings.llm_context)),
                n_threads=settings.cpu_threads,
            )
        from modelmint.serving.llama_batch_engine import BatchedLlamaBackend

        return BatchedLlamaBackend(
            resolve_artifact(spec.artifact_uri),
            n_threads=settings.cpu_threads,
            slots=int(config.get("slots", settings.llm_slots)),
            context_per_slot=int(config.get("context", settings.llm_context)),
            max_queued=int(config.get("max_queued", settings.llm_max_queued)),
            queue_timeout_s=float(config.get("queue_timeout_s", settings.llm_queue_timeout_s)),
            flash_attn=flash_attn,
            model=spec.public_name,
            deployment=spec.id,
        )
    if spec.backend in ("sentence_transformer", "onnx_embedding"):
        return _embedding_backend(spec, settings)
    if spec.backend == "openai_remote":
        config = spec.config
        return RemoteOpenAIBackend(
            RemoteSettings(
                base_url=spec.artifact_uri,
                upstream_model=str(config.get("upstream_model", spec.model_name)),
                api_key_env=config.get("api_key_env"),
                timeout_s=float(config.get("timeout_s", settings.upstream_timeout_s)),
                connect_timeout_s=settings.upstream_connect_timeout_s,
                max_retries=int(config.get("max_retries", settings.upstream_max_retries)),
            )
        )
    if spec.backend == "predictor":
        from modelmint.serving.dynamic_batching import BatchLimits
        from modelmint.serving.predictor_backend import PredictorBackend

        return PredictorBackend(
            resolve_artifact(spec.artifact_uri),
            threads=settings.cpu_threads,
            limits=BatchLimits.from_config(spec.config),
            model=spec.public_name,
            deployment=spec.id,
        )
    raise InvalidRequest(f"unknown backend {spec.backend!r}; known: {', '.join(BACKENDS)}")


def _embedding_backend(spec: DeploymentSpec, settings: Settings) -> Backend:
    """PyTorch (``sentence_transformer``) or ONNX Runtime (``onnx_embedding``), batched.

    Deployment config: ``max_batch_size``, ``max_wait_ms``, ``max_queue``, ``timeout_ms``
    (see ``BatchLimits``); ``threads`` (default: the settings' CPU threads); for ONNX,
    ``quantize``: ``"none"`` (fp32) or ``"int8"``.
    """
    from modelmint.serving.dynamic_batching import BatchLimits

    config = spec.config
    common: dict[str, Any] = {
        "n_threads": int(config.get("threads", settings.cpu_threads)),
        "limits": BatchLimits.from_config(config),
        "model": spec.public_name,
        "deployment": spec.id,
    }
    model_dir = resolve_artifact(spec.artifact_uri)
    if spec.backend == "sentence_transformer":
        from modelmint.serving.sentence_embedder import SentenceEmbeddingBackend

        return SentenceEmbeddingBackend(model_dir, **common)
    from modelmint.serving.onnx_embedder import OnnxEmbeddingBackend

    return OnnxEmbeddingBackend(
        model_dir,
        cache_dir=settings.home / "artifacts" / "onnx",
        quantize=config.get("quantize", "none"),
        **common,
    )
