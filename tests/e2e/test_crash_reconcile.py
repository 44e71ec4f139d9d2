"""`make crash`, bounded: three SIGKILLs under paid load, then usage and invoices reconciled.

The same code as the script (scripts/crash_reconcile.py), with a fixed seed and kills
aimed early, so the run stays short.
"""

from __future__ import annotations

from pathlib import Path

from scripts.crash_reconcile import reconcile


def test_three_sigkills_lose_and_duplicate_no_usage_and_invoices_match_usage(
    tmp_path: Path,
) -> None:
    checks = reconcile(tmp_path, kills=3, seed=7, kill_after=(20, 60))
    failed = {name: check.figure for name, check in checks.items() if not check.ok}
    assert not failed, f"crash reconciliation failed: {failed}"
    assert checks["lost (received, no record)"].figure == 0
    assert checks["duplicated records"].figure == 0
    assert checks["invoiced usage (exact)"].figure == checks["usage charges"].figure
    # Each of the three kills landed after at least 20 answers, plus the one after restart.
    assert checks["answers received"].figure >= 3 * 20 + 1
