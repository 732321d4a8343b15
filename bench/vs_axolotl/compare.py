"""Pure comparison of our tokenized examples with axolotl's prepared rows.

Exact equality of input_ids and labels, except for the deliberate divergences listed
in docs/axolotl.md, each applied only where it is named and checked, not ignored:

- D1 label 0: never predicted (the causal-LM loss shifts labels by one), so it is
  left out; axolotl copies the BOS id there when it trains inputs, we write -100.
- D2/D3 chat templates only: we prepend BOS when the tokenizer adds one (as
  `finetune generate` does when it tokenizes a prompt) and end every example with a
  trained EOS; axolotl follows the template, which may render neither. The extra
  BOS/EOS must be exactly that one token.
- D4 chat templates only: we train each trained turn through the template's
  end-of-turn text ("<|im_end|>\\n"); axolotl trains the content and only an
  `eot_tokens` token (by default EOS, which chatml does not render). Every token axolotl
  trains we train too; the extra ones must directly follow a trained span, at most
  TERMINATOR_MAX tokens each.
- D5 chat templates with train_on_inputs: we train the whole rendering, axolotl every
  turn's content; every token axolotl trains we train too, and we train all but label 0.
- D6 completion texts longer than sequence_len: we keep the first sequence_len tokens,
  axolotl also keeps the rest as continuation rows (no BOS) right after the first one.
  Each continuation must follow a row of exactly sequence_len tokens; without them, the
  rows match row for row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

IGNORE = -100
TERMINATOR_MAX = 8
Row = dict[str, list[int]]


@dataclass(frozen=True)
class Rules:
    """Which divergences apply to a case (all off: exact equality)."""

    chat: bool = False
    train_on_inputs: bool = False
    bos_id: int | None = None
    eos_id: int | None = None
    truncate_at: int | None = None  # D6: sequence_len, when some examples exceed it


@dataclass
class Diff:
    """What differs; empty when the datasets agree."""

    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __str__(self) -> str:
        more = len(self.problems) - 8
        return "\n".join(self.problems[:8]) + (f"\n... and {more} more" if more > 0 else "")


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def align(ours: Row, theirs: Row, rules: Rules) -> Row:
    """Ours with D2/D3 undone where (and only where) they apply."""
    ids, labels = list(ours["input_ids"]), list(ours["labels"])
    t_ids = theirs["input_ids"]
    if rules.chat and ids and t_ids and ids[0] == rules.bos_id and t_ids[0] != rules.bos_id:
        ids, labels = ids[1:], labels[1:]
    if rules.chat and ids and ids[-1] == rules.eos_id and len(ids) == len(t_ids) + 1:
        ids, labels = ids[:-1], labels[:-1]
    return {"input_ids": ids, "labels": labels}


def row_problems(ours: Row, theirs: Row, rules: Rules, where: str) -> list[str]:
    o = align(ours, theirs, rules)
    o_ids, t_ids = o["input_ids"], theirs["input_ids"]
    if o_ids != t_ids:
        at = first_difference(o_ids, t_ids)
        return [
            f"{where} input_ids differ at token {at} (lengths {len(o_ids)} vs {len(t_ids)}): "
            f"ours {o_ids[max(0, at - 3) : at + 4]} axolotl {t_ids[max(0, at - 3) : at + 4]}"
        ]
    o_lab, t_lab = o["labels"][1:], theirs["labels"][1:]  # D1
    if o_lab == t_lab:
        return []
    if not rules.chat:
        at = first_difference(o_lab, t_lab) + 1
        return [
            f"{where} labels differ at token {at}: ours {o['labels'][max(0, at - 3) : at + 4]} "
            f"axolotl {theirs['labels'][max(0, at - 3) : at + 4]}"
        ]
    return _chat_label_problems(o_ids[1:], o_lab, t_lab, rules, where)


def _chat_label_problems(
    ids: list[int], ours: list[int], theirs: list[int], rules: Rules, where: str
) -> list[str]:
    only_theirs = [
        i for i, (o, t) in enumerate(zip(ours, theirs, strict=True)) if t != IGNORE and o != t
    ]
    if only_theirs:
        return [f"{where}: axolotl trains positions we do not: {only_theirs[:8]}"]
    if rules.train_on_inputs:  # D5
        untrained = [i for i, (o, t) in enumerate(zip(ours, ids, strict=True)) if o != t]
        return [f"{where}: train_on_inputs yet untrained positions {untrained[:8]}"] * bool(
            untrained
        )
    problems: list[str] = []  # D4
    i = 0
    while i < len(ours):
        if ours[i] != IGNORE and theirs[i] == IGNORE:
            start = i
            while i < len(ours) and ours[i] != IGNORE and theirs[i] == IGNORE:
                i += 1
            if start == 0 or theirs[start - 1] == IGNORE or i - start > TERMINATOR_MAX:
                problems.append(
                    f"{where}: we train positions {start}..{i - 1} that axolotl masks, and "
                    "they are not a turn terminator right after a trained turn"
                )
        i += 1
    return problems


def rows_equal(ours: Sequence[Row], theirs: Sequence[Row], rules: Rules = Rules()) -> Diff:
    """Row for row, in order."""
    diff = Diff()
    if rules.truncate_at is not None:  # D6
        theirs, problems = first_chunks(theirs, rules.truncate_at, rules.bos_id)
        diff.problems += problems
    if len(ours) != len(theirs):
        diff.problems.append(f"row count: ours {len(ours)}, axolotl {len(theirs)}")
    for i, (o, t) in enumerate(zip(ours, theirs, strict=False)):
        diff.problems += row_problems(o, t, rules, f"row {i}")
    return diff


def first_chunks(
    theirs: Sequence[Row], cut: int, bos_id: int | None
) -> tuple[list[Row], list[str]]:
    """axolotl's completion rows without their continuation chunks (D6), and any
    continuation that does not follow a full-length chunk."""
    kept: list[Row] = []
    problems: list[str] = []
    previous: Row | None = None
    for i, row in enumerate(theirs):
        if row["input_ids"][:1] == [bos_id]:
            kept.append(row)
        elif previous is None or len(previous["input_ids"]) != cut:
            problems.append(f"axolotl row {i} starts without BOS but follows no full chunk")
        previous = row
    if len(kept) == len(theirs):
        problems.append("D6 expected continuation rows (texts longer than sequence_len)")
    return kept, problems


def same_examples(ours: Sequence[Row], theirs: Sequence[Row], rules: Rules = Rules()) -> Diff:
    """The same examples, order aside: paired by input_ids (after D2/D3), then compared."""
    diff = Diff()
    if len(ours) != len(theirs):
        diff.problems.append(f"example count: ours {len(ours)}, axolotl {len(theirs)}")
    pool: dict[tuple[int, ...], list[Row]] = defaultdict(list)
    for t in theirs:
        pool[tuple(t["input_ids"])].append(t)
    for i, o in enumerate(ours):
        candidates = [t for key, ts in pool.items() for t in ts if _matches(o, key, rules)]
        if not candidates:
            diff.problems.append(f"our example {i} has no axolotl example with its input_ids")
            continue
        match = candidates[0]
        pool[tuple(match["input_ids"])].remove(match)
        diff.problems += row_problems(o, match, rules, f"example {i}")
    return diff


def _matches(ours: Row, key: tuple[int, ...], rules: Rules) -> bool:
    return tuple(align(ours, {"input_ids": list(key), "labels": []}, rules)["input_ids"]) == key


def unpack(rows: Sequence[Row]) -> list[Row]:
    """Packed rows back into examples, split where position_ids restart at 0."""
    out: list[Row] = []
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        bounds = [*starts, len(row["input_ids"])]
        for s, e in zip(bounds, bounds[1:], strict=False):
            out.append({"input_ids": row["input_ids"][s:e], "labels": row["labels"][s:e]})
    return out
