"""Scores: every kind becomes one comparable number (or a label), bad ones a 400."""

from __future__ import annotations

import statistics

import pytest

from modelmint.errors import InvalidRequest
from modelmint.feedback.compare import scale_of, score_stats
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


@pytest.mark.parametrize(
    ("kinds", "scores", "bounds"),
    [
        ({"thumbs"}, [1.0] * 19 + [0.0], (0.0, 1.0)),
        ({"stars"}, [5.0] * 19 + [1.0], (1.0, 5.0)),
        ({"stars"}, [1.0] * 19 + [5.0], (1.0, 5.0)),
    ],
)
def test_the_interval_stays_within_the_scale_of_the_scores(
    kinds: set[str], scores: list[float], bounds: tuple[float, float]
) -> None:
    stats = score_stats(scores, scale_of(kinds))
    assert stats.low is not None and stats.high is not None
    assert bounds[0] <= stats.low <= stats.high <= bounds[1]
    assert bounds[0] in (stats.low, stats.high) or bounds[1] in (stats.low, stats.high)


def test_numeric_scores_have_no_scale_to_clip_to() -> None:
    assert scale_of({"numeric"}) is None and scale_of({"thumbs", "numeric"}) is None
    assert scale_of({"thumbs", "stars"}) == (0.0, 5.0)
    stats = score_stats([10.0, 12.0, 11.0], scale_of({"numeric"}))
    assert stats.high == pytest.approx(11.0 + 1.96 / 3**0.5)  # past the highest score
