"""The inputs of classifier and recommender requests, as a predictor takes them.

Images travel as ``{"image": "<base64>"}`` and reach the predictor as bytes; every
input is checked by the backend before any is queued, so one bad row fails its own
request with a 400 naming it, never a batch shared with other requests.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from modelmint.errors import InvalidRequest
from modelmint.inference.protocol import ClassificationInput
from modelmint.serving.backend import PredictionBackend

__all__ = ["decode_input", "validated"]


def decode_input(item: ClassificationInput, index: int) -> Any:
    """``item`` as the predictor takes it: an image's bytes, anything else unchanged."""
    if isinstance(item, dict) and set(item) == {"image"}:
        encoded = item["image"]
        if not isinstance(encoded, str):
            raise InvalidRequest("image must be a base64 string", param=f"input[{index}].image")
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise InvalidRequest(
                "image is not valid base64", param=f"input[{index}].image"
            ) from None
    return item


def validated(backend: PredictionBackend, item: Any, index: int) -> Any:
    """``item`` as ``backend`` checked it; its 400 names the input (``input[index]``)."""
    try:
        return backend.validate(item)
    except InvalidRequest as exc:
        exc.param = exc.param or f"input[{index}]"
        raise
