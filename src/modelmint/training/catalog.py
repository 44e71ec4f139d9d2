"""Recipe names as the CLI knows them, imported lazily: torch and friends load only
when a recipe is actually used."""

from __future__ import annotations

import importlib
from typing import Any

from modelmint.training.recipe import DataError, Recipe

__all__ = ["RECIPES", "recipe_class"]

RECIPES = {
    "tabular-classifier": "modelmint.training.recipes.tabular:TabularClassifier",
    "image-classifier": "modelmint.training.recipes.image:ImageClassifier",
    "recommender": "modelmint.training.recipes.recommender:Recommender",
    "text-classifier": "modelmint.training.recipes.text:TextClassifier",
    "causal-lm-lora": "modelmint.training.recipes.causal_lm:CausalLMLoRA",
}


def recipe_class(name: str) -> type[Recipe[Any]]:
    target = RECIPES.get(name)
    if target is None:
        raise DataError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    module_name, class_name = target.split(":")
    cls: type[Recipe[Any]] = getattr(importlib.import_module(module_name), class_name)
    return cls
