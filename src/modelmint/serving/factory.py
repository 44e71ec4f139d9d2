"""Build the backend object a deployment asks for."""

from __future__ import annotations

from modelmint.config import Settings
from modelmint.errors import InvalidRequest
from modelmint.registry.catalog import DeploymentSpec
from modelmint.serving.artifacts import resolve_artifact
from modelmint.serving.backend import Backend
from modelmint.serving.remote import RemoteOpenAIBackend, RemoteSettings

__all__ = ["BACKENDS", "build_backend"]

BACKENDS = ("llama_cpp", "sentence_transformer", "openai_remote")


def build_backend(spec: DeploymentSpec, settings: Settings) -> Backend:
    if spec.backend == "llama_cpp":
        config = spec.config
        if config.get("engine", "batched") == "single":
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
        )
    if spec.backend == "sentence_transformer":
        from modelmint.serving.sentence_embedder import SentenceEmbeddingBackend

        return SentenceEmbeddingBackend(
            resolve_artifact(spec.artifact_uri), n_threads=settings.cpu_threads
        )
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
    raise InvalidRequest(f"unknown backend {spec.backend!r}; known: {', '.join(BACKENDS)}")
