"""The promote / keep / roll back rule, on versions built by hand."""

from __future__ import annotations

from decimal import Decimal

from modelmint.feedback.compare import MIN_RATINGS, VersionReport, recommend, score_stats


def _version(
    number: int, scores: list[float], *, errors: int = 0, margin: str = "1.00"
) -> VersionReport:
    requests = 100
    return VersionReport(
        version=number,
        version_id=f"v{number}",
        score=score_stats(scores),
        metrics={},
        requests=requests,
        errors=errors,
        error_rate=Decimal(errors) / Decimal(requests + errors),
        avg_latency_ms=Decimal(5),
        revenue=Decimal("2.00"),
        cost=Decimal("2.00") - Decimal(margin),
        margin=Decimal(margin),
        currency="USD",
    )


MOSTLY_DOWN = [0.0] * 15 + [1.0] * 5
MOSTLY_UP = [1.0] * 18 + [0.0] * 2


def test_a_clearly_better_candidate_is_promoted_and_the_rule_is_stated() -> None:
    decision = recommend(_version(1, MOSTLY_DOWN), _version(2, MOSTLY_UP))
    assert decision.action == "promote"
    assert "95% interval" in decision.rule and "v2" in decision.reason


def test_a_clearly_worse_candidate_is_rolled_back() -> None:
    assert recommend(_version(1, MOSTLY_UP), _version(2, MOSTLY_DOWN)).action == "roll back"


def test_more_errors_roll_back_whatever_users_say() -> None:
    decision = recommend(_version(1, MOSTLY_DOWN), _version(2, MOSTLY_UP, errors=10))
    assert decision.action == "roll back" and "error rate" in decision.reason


def test_too_few_ratings_keep_the_current_split() -> None:
    few = MOSTLY_UP[: MIN_RATINGS - 1]
    assert recommend(_version(1, MOSTLY_DOWN), _version(2, few)).action == "keep"


def test_a_better_score_that_loses_much_margin_is_kept_not_promoted() -> None:
    decision = recommend(_version(1, MOSTLY_DOWN), _version(2, MOSTLY_UP, margin="0.50"))
    assert decision.action == "keep"


def test_margin_per_thousand_requests_counts_errors_too() -> None:
    version = _version(1, [], errors=25, margin="1.25")
    assert version.per_1k(version.margin) == Decimal("10.000000")
