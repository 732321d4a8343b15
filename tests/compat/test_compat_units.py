"""The pure parts of the axolotl comparison (no axolotl venv needed): the divergence
rules of compare.py and the paired-ratio summary of the speed bench."""

from __future__ import annotations

from bench.vs_axolotl.compare import Rules, rows_equal, same_examples, unpack
from bench.vs_axolotl.report import render_section
from bench.vs_axolotl.speed import SpeedSizes, summarize

M = -100
BOS, EOS = 1, 2
CHAT = Rules(chat=True, bos_id=BOS, eos_id=EOS)


def row(ids: list[int], labels: list[int]) -> dict[str, list[int]]:
    return {"input_ids": ids, "labels": labels}


def test_exact_rows_agree_and_label_zero_is_ignored() -> None:
    theirs = [row([BOS, 5, 6, EOS], [BOS, 5, 6, EOS])]  # axolotl copies BOS into label 0
    ours = [row([BOS, 5, 6, EOS], [M, 5, 6, EOS])]
    assert not rows_equal(ours, theirs)
    assert rows_equal([row([BOS, 5, 7, EOS], [M, 5, 7, EOS])], theirs)  # a token differs
    assert rows_equal([row([BOS, 5, 6, EOS], [M, M, 6, EOS])], theirs)  # a mask differs
    assert rows_equal(ours + ours, theirs)  # a row too many


def test_chat_bos_eos_and_terminator_divergences_are_bounded() -> None:
    # axolotl: no BOS, content (7, 8) trained, terminator (9, 10) masked, no EOS
    theirs = [row([4, 5, 7, 8, 9, 10], [M, M, 7, 8, M, M])]
    ours = [row([BOS, 4, 5, 7, 8, 9, 10, EOS], [M, M, M, 7, 8, 9, 10, EOS])]
    assert not rows_equal(ours, theirs, CHAT)
    assert rows_equal(ours, theirs)  # without the chat rules they differ
    # an extra trained run that does not follow a trained turn is not a terminator
    theirs_long = [row([4, 5, 6, 7, 8, 9, 10], [M, M, M, 7, 8, M, M])]
    header = [row([BOS, 4, 5, 6, 7, 8, 9, 10, EOS], [M, M, M, 6, 7, 8, 9, 10, EOS])]
    assert rows_equal(header, theirs_long, CHAT)
    long_tail = [row([BOS, 4, 5, 6, 7, 8, 9, 10, EOS], [M, M, M, M, 7, 8, 9, 10, EOS])]
    assert not rows_equal(long_tail, theirs_long, CHAT)
    # a token axolotl trains that we mask is always a difference
    missing = [row([BOS, 4, 5, 7, 8, 9, 10, EOS], [M, M, M, M, 8, 9, 10, EOS])]
    assert rows_equal(missing, theirs, CHAT)


def test_packed_examples_compare_order_aside_after_unpacking() -> None:
    a, b = row([BOS, 5, 6], [M, 5, 6]), row([BOS, 7], [M, 7])
    packed = [
        {
            "input_ids": [BOS, 7, BOS, 5, 6],
            "labels": [M, 7, M, 5, 6],
            "position_ids": [0, 1, 0, 1, 2],
        }
    ]
    assert unpack(packed) == [b, a]
    assert not same_examples(unpack(packed), [a, b])
    assert same_examples(unpack(packed), [a, a])


def test_speed_summary_is_the_median_of_paired_ratios() -> None:
    raw = []
    for rnd, (ours_wall, their_wall) in enumerate([(10.0, 20.0), (10.0, 40.0), (10.0, 25.0)]):
        for tool, wall in (("ours", ours_wall), ("axolotl", their_wall)):
            raw.append(
                {
                    "round": rnd,
                    "mode": "padded",
                    "tool": tool,
                    "wall_s": wall,
                    "cpu_s": wall,
                    "peak_rss_mib": 100.0 if tool == "ours" else 200.0,
                    "train_seconds": wall / 2,
                    "train_tokens_per_s": 1000 / wall,
                }
            )
    for entry in list(raw):  # the same rounds again as "packed"
        raw.append(entry | {"mode": "packed"})
    summary = summarize(raw)
    assert summary["ratios"]["padded"]["end_to_end"] == 2.5  # median of 2, 4, 2.5
    assert summary["ratios"]["padded"]["pairs"] == 3
    assert summary["headline"] == {
        "axolotl_train_tokens_per_s_ratio_mid": 2.5,
        "axolotl_end_to_end_ratio_mid": 2.5,
        "axolotl_peak_rss_ratio_mid": 0.5,
    }

    result = summary | {"sizes": SpeedSizes().__dict__, "dataset_tokens": {"padded": 9}}
    text = "\n".join(render_section(result))
    assert "| ours, packed | 10.0 |" in text and "| pooled (6 pairs) | 2.50 |" in text


def test_completion_continuations_are_the_only_extra_rows() -> None:
    first, rest = row([BOS, 5, 6, 7], [BOS, 5, 6, 7]), row([8, EOS], [8, EOS])
    short = row([BOS, 5, EOS], [BOS, 5, EOS])
    rules = Rules(truncate_at=4, bos_id=BOS)
    ours = [row([BOS, 5, 6, 7], [M, 5, 6, 7]), row([BOS, 5, EOS], [M, 5, EOS])]
    assert not rows_equal(ours, [first, rest, short], rules)
    assert rows_equal(ours, [first, short], rules)  # no continuation: D6 not shown
    assert rows_equal(ours, [short, rest, first], rules)  # a continuation after a short row
