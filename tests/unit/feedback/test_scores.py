"""Scores: every kind becomes one comparable number (or a label), bad ones a 400."""

from __future__ import annotations

import statistics

import pytest

from modelmint.errors import InvalidRequest
from modelmint.feedback.compare import score_stats
from modelmint.feedback.feedback import normalise_score


@pytest.mark.parametrize(
    ("score", "kind", "expected"),
    [
        (True, None, ("thumbs", 1.0, None)),
        (False, None, ("thumbs", 0.0, None)),
        ("up", None, ("thumbs", 1.0, None)),
        ("DOWN", None, ("thumbs", 0.0, None)),
        (1, "thumbs", ("thumbs", 1.0, None)),
        (4, None, ("stars", 4.0, None)),
        (0.25, None, ("numeric", 0.25, None)),
        (7, "numeric", ("numeric", 7.0, None)),
        ("too formal", None, ("categorical", None, "too formal")),
    ],
)
def test_scores_of_every_kind_normalise(
    score: bool | int | float | str, kind: str | None, expected: tuple[object, ...]
) -> None:
    assert normalise_score(score, kind) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("score", "kind"),
    [(0, None), (6, "stars"), (2.5, "stars"), (True, "stars"), ("maybe", "thumbs"),
     (float("nan"), "numeric"), ("x", "numeric"), (3, "categorical"), ("  ", "categorical")],
)  # fmt: skip
def test_invalid_scores_are_refused_naming_the_score(
    score: bool | int | float | str, kind: str | None
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        normalise_score(score, kind)  # type: ignore[arg-type]
    assert refused.value.param == "score" and refused.value.status_code == 400


def test_the_interval_is_the_normal_approximation_around_the_mean() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    stats = score_stats(scores)
    half = 1.96 * statistics.stdev(scores) / len(scores) ** 0.5
    assert stats.count == 8 and stats.mean == pytest.approx(statistics.mean(scores))
    assert stats.low == pytest.approx(statistics.mean(scores) - half)
    assert stats.high == pytest.approx(statistics.mean(scores) + half)


def test_one_rating_has_a_mean_but_no_interval() -> None:
    assert score_stats([4.0]).mean == 4.0 and score_stats([4.0]).low is None
    assert score_stats([]).mean is None
