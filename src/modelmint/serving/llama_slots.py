"""The batching engine's KV slots: which prompt's cells each slot still holds, which free
slot a new prompt takes, and how live sequences stay packed in the lowest slots.

A slot is one llama.cpp sequence id with a KV stream of its own. A freed slot keeps its
prompt's cells, so a new prompt sharing their start (the chat template, a system prompt,
an earlier turn) computes only the rest. Engine thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llama_cpp as lc
from prometheus_client import Counter

from modelmint.serving.llama_sequence import Job, by_seq

__all__ = ["KvSlots"]

# How many more kept prompt tokens another free slot must share with a new prompt than
# the lowest free slot does before its cells are copied over: a copy costs milliseconds,
# computing 8 prompt tokens tens of them.
_COPY_GAIN = 8


class KvSlots:
    """The prompt each slot keeps, and the placement of sequences in slots."""

    def __init__(self, reused_tokens: Counter, spare: int | None = None) -> None:
        # Prompt tokens whose KV cells were kept from an earlier prompt (not computed).
        self._reused_tokens = reused_tokens
        # A KV stream no sequence ever runs in, to swap two slots' cells through (see
        # ``_move``); None: moves overwrite what the target slot kept.
        self._spare = spare
        # The context's KV memory: set by the engine thread once the context exists.
        self.memory: Any = None
        # Slot -> the prompt tokens whose KV cells it still holds.
        self._kept: dict[int, list[int]] = {}
        # When each slot was last taken (a count of takings), to keep recent prompts.
        self._used: dict[int, int] = {}
        self._ticks = 0

    def take(
        self, free: list[int], tokens: list[int], among: int, *, alone: bool = False
    ) -> tuple[int, int]:
        """A free slot for a prompt, and how many of its tokens are already in that slot.

        One of the ``among`` lowest free slots, ``among`` being how many prompts this
        admission places. With a KV stream per slot, llama.cpp computes only sequences
        with consecutive ids in one pass, so the live slots must stay packed from 0:
        measured in process, 6 streams in slots 0-5 decoded at 208-224 tok/s, in
        slots 0, 1, 2, 4, 5, 7 at 131-138.

        A slot keeps the KV cells of its last prompt when it is freed, and a new prompt
        computes only what follows the start it shares with them: chat prompts of one
        deployment mostly start alike (the template, a system prompt, an earlier turn
        of the same conversation). So the candidate sharing the longest start is taken
        (on a tie, the one keeping the least, so a useful start is not overwritten).
        When a free slot outside the candidates shares a longer start, its cells are
        copied in first: one memcpy of its KV stream (about 47 MB for SmolLM2-135M at
        2048 cells, a few milliseconds), far less than computing those tokens again.
        The last prompt token always runs again: its logits give the first answer token.
        """

        usable = len(tokens) - 1
        # Kept tokens this prompt can use, per free slot.
        shares = {
            slot: max(0, min(_shared_prefix(self._kept.get(slot, ()), tokens), usable))
            for slot in free
        }
        if alone and among == 1:
            # Nothing else decodes, so no pass needs packing and the slots can keep the
            # last few distinct prompts (a repeated prompt, or the next turn of a
            # conversation, then computes only its new tokens). The slot sharing the
            # longest start is taken where it is if writing there loses nothing it kept
            # (its prompt is all shared, or this one is wholly in it); otherwise the slot
            # used longest ago is, with that start copied in. Should more requests join,
            # ``compact`` packs the live ones with one stream copy each.
            best = max(free, key=lambda slot: (shares[slot], self._used.get(slot, -1)))
            kept = len(self._kept.get(best, ()))
            if shares[best] == kept or shares[best] == usable:
                seq = best
            else:
                seq = min(free, key=lambda slot: (self._used.get(slot, -1), slot))
                if shares[best] >= shares[seq] + _COPY_GAIN:
                    self._copy_stream(best, seq)
                    shares[seq] = shares[best]
            reused = shares[seq]
        else:
            candidates = sorted(free)[:among]
            seq = max(candidates, key=lambda slot: (shares[slot], -len(self._kept.get(slot, ()))))
            reused = shares[seq]
            donor = max(free, key=shares.__getitem__)
            if shares[donor] >= reused + _COPY_GAIN:
                self._move(donor, seq)  # its tail after the shared start goes below
                reused = shares[donor]
        self._ticks += 1
        self._used[seq] = self._ticks
        free.remove(seq)
        self._kept.pop(seq, None)
        lc.llama_memory_seq_rm(self.memory, seq, reused, -1)
        self._reused_tokens.inc(reused)
        return seq, reused

    def compact(self, live: list[Job], free: list[int]) -> None:
        """Move the highest live sequences down into free slots below them.

        New requests fill the lowest free slots, but one that finishes between others
        leaves a gap, and with a gap every step runs as two compute passes (6 streams
        in slots 0, 1, 2, 4, 5, 7: 131-138 tok/s, in 0-5: 208-224). A move swaps the
        two slots' KV streams (``_move``), done by llama.cpp before the next step
        computes, so the prompt the gap kept stays kept, in the slot moved from.
        """
        # One live sequence is one pass wherever it is: moving it would only spend a copy.
        while len(live) > 1 and free and min(free) < live[-1].seq:
            job, hole = live.pop(), min(free)
            if not self._move(job.seq, hole):
                self.keep_prompt(job)  # its cells stay where they were too
            free.remove(hole)
            free.append(job.seq)
            job.seq = job.charge.slot = hole
            live.append(job)
            live.sort(key=by_seq)

    def keep_prompt(self, job: Job) -> None:
        """Note that the job's slot holds its prompt's cells, for a prompt with the same start."""
        self._kept[job.seq] = job.tokens[: min(job.n_past, len(job.tokens))]

    def _move(self, source: int, target: int) -> bool:
        """Put slot ``source``'s KV cells in slot ``target``, keeping what ``target`` kept;
        True if the two were swapped, False if ``source`` still holds its own cells.

        Overwriting the target would lose the prompt it kept: measured with the bench's
        eight prompts at 8 streams, moves and donor copies left two prompts kept twice
        and two not at all after a round, so the next round computed ~15 prompt tokens
        again (~50 ms) where it could have computed 2. So the target's cells go to the
        source slot by way of the spare stream: three stream copies (~0.4 ms each here).
        """
        kept = self._kept.pop(target, None)
        if self._spare is None or kept is None or len(kept) < _COPY_GAIN:
            self._copy_stream(source, target)
            return False
        self._copy_stream(target, self._spare)
        self._copy_stream(source, target)
        self._copy_stream(self._spare, source)
        self._kept[source] = kept
        return True

    def _copy_stream(self, source: int, target: int) -> None:
        """Copy slot ``source``'s KV cells into slot ``target``, before the next step.

        Whole streams only: llama.cpp copies across KV streams no other way.
        """
        lc.llama_memory_seq_cp(self.memory, source, target, -1, -1)


def _shared_prefix(kept: Sequence[int], tokens: Sequence[int]) -> int:
    n = 0
    for a, b in zip(kept, tokens, strict=False):
        if a != b:
            break
        n += 1
    return n
