"""The axolotl section of bench/RESULTS.md."""

from __future__ import annotations

from typing import Any

from bench.vs_axolotl.speed import MODES, TOOLS


def _f(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_section(res: dict[str, Any]) -> list[str]:
    sizes, versions = res["sizes"], res.get("versions", {})
    out = [
        "## 6. Against axolotl itself (`builtin:" + sizes["model"] + "`)",
        "",
        f"LoRA (q/k/v/o, r 8), fp32 on CPU, one epoch of {sizes['rows']} synthetic Alpaca rows "
        f"({res['dataset_tokens']['padded']} tokens), micro-batch {sizes['batch_size']}, "
        f"sequence_len {sizes['sequence_len']}; {sizes['repeats']} interleaved rounds, each "
        "variant a fresh process from the same YAML. axolotl "
        f"{versions.get('axolotl', '?')} (torch {versions.get('torch', '?')}, transformers "
        f"{versions.get('transformers', '?')}) in its own venv; method in docs/axolotl.md.",
        "",
        "| variant | end-to-end s | CPU s | training s | train tokens/s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        for tool in TOOLS:
            m = res["medians"][f"{tool}:{mode}"]
            out.append(
                f"| {tool}, {mode} | {_f(m['wall_s'], 1)} | {_f(m['cpu_s'], 1)} | "
                f"{_f(m['train_seconds'], 1)} | {_f(m['train_tokens_per_s'], 0)} | "
                f"{_f(m['peak_rss_mib'], 0)} |"
            )
    out += [
        "",
        "Median of paired per-round ratios (end-to-end, tokens/s and CPU: >1 means ours is "
        "faster; RSS: ours / axolotl, <1 means ours uses less):",
        "",
        "| | end-to-end | train tokens/s | CPU time | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in (*MODES, "pooled"):
        r = res["ratios"][name]
        out.append(
            f"| {name} ({r['pairs']} pairs) | {_f(r['end_to_end'])} | "
            f"{_f(r['train_tokens_per_s'])} | {_f(r['cpu'])} | {_f(r['peak_rss'])} |"
        )
    load = res.get("load", {})
    out += [
        "",
        "Headline (pooled): "
        + ", ".join(f"`{k}` = {v}" for k, v in res["headline"].items())
        + f"; load average min/median/max {_f(load.get('min'), 1)} / "
        f"{_f(load.get('median'), 1)} / {_f(load.get('max'), 1)}.",
    ]
    return out
