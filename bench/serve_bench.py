"""Serving throughput and latency: `finetune serve` vs sequential transformers `generate`.

One worker process loads the model once and, per round (order rotated), runs
- the baseline: every request through `model.generate` one after another (greedy, the
  same prompts and lengths), timing each; its latency under C closed-loop clients is
  that of a one-at-a-time server (each request waits for those queued before it);
- the server (the real app on uvicorn, loopback) under C = 1, 8, 32 concurrent
  clients (asyncio httpx in the same process) issuing the same requests.
Every request generates exactly `max_tokens` (ignore_eos), so both sides do equal work.
"""

from __future__ import annotations

import asyncio
import random
import resource
import sys
import time
from typing import Any

from bench.common import median, percentile, worker_main

CONCURRENCY = (1, 8, 32)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def requests(tokenizer: Any, count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    words = [
        "the",
        "model",
        "learns",
        "to",
        "follow",
        "an",
        "instruction",
        "and",
        "answer",
        "with",
        "short",
        "text",
    ]
    return [
        tokenizer(" ".join(rng.choices(words, k=rng.randint(6, 48))))["input_ids"]
        for _ in range(count)
    ]


def sequential(model: Any, prompts: list[list[int]], max_tokens: int, pad: int) -> dict[str, Any]:
    import torch

    durations, cpu0, t0 = [], _cpu(), time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            start = time.perf_counter()
            x = torch.tensor([ids])
            model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            durations.append(time.perf_counter() - start)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "cpu_s": _cpu() - cpu0, "tokens": len(prompts) * max_tokens}
    out["service_s"] = durations
    return out


def queued_latencies(service: list[float], clients: int) -> list[float]:
    """Closed-loop clients in front of a one-at-a-time server: request i starts when the
    server is free and its client has sent it (right after its previous answer)."""
    free_at, client_ready, latencies = 0.0, [0.0] * clients, []
    for i, s in enumerate(service):
        c = i % clients
        start = max(free_at, client_ready[c])
        free_at = start + s
        latencies.append(free_at - client_ready[c])
        client_ready[c] = free_at
    return latencies


async def _clients(url: str, prompts: list[list[int]], clients: int, max_tokens: int) -> list:
    import httpx

    queue = list(enumerate(prompts))
    latencies: list[float] = []
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            _, ids = queue.pop(0)
            body = {"model": "bench", "prompt": ids, "max_tokens": max_tokens}
            body.update(temperature=0, ignore_eos=True)
            start = time.perf_counter()
            resp = await http.post(f"{url}/v1/completions", json=body, timeout=600)
            resp.raise_for_status()
            latencies.append(time.perf_counter() - start)
            tokens += resp.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return [latencies, tokens]


def served(url: str, prompts: list[list[int]], clients: int, max_tokens: int) -> dict[str, Any]:
    cpu0, t0 = _cpu(), time.perf_counter()
    latencies, tokens = asyncio.run(_clients(url, prompts, clients, max_tokens))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "cpu_s": _cpu() - cpu0, "tokens": tokens, "latency_s": latencies}


def worker(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    sys.path.insert(0, "tests/runtime")
    from serve_helpers import LiveServer

    from finetune_runtime.model.tiny import resolve_builtin
    from finetune_runtime.serving.app import ServeOptions
    from finetune_runtime.serving.loading import ServeSource, load

    torch.set_num_threads(args["threads"])
    source = ServeSource(base=str(resolve_builtin(args["model"])), base_name="bench")
    live = LiveServer(lambda: load(source), ServeOptions(max_batch=32, max_queue=1024)).start()
    loaded = live.state.loaded
    assert loaded is not None
    prompts = requests(loaded.tokenizer, args["requests"])
    n = args["max_tokens"]
    served(live.url, prompts[:2], 2, 4)  # warm up both paths
    sequential(loaded.model, prompts[:2], 4, loaded.pad_id)
    rounds = []
    variants = ["sequential", *(f"serve_{c}" for c in CONCURRENCY)]
    for r in range(args["repeats"]):
        shift = r % len(variants)
        result: dict[str, Any] = {}
        for v in variants[shift:] + variants[:shift]:
            if v == "sequential":
                result[v] = sequential(loaded.model, prompts, n, loaded.pad_id)
            else:
                result[v] = served(live.url, prompts, int(v.split("_")[1]), n)
            print(f"  serve bench round {r} {v}: {result[v]['wall_s']:.1f}s", file=sys.stderr)
        rounds.append(result)
    live.stop()
    return {"rounds": rounds}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Per concurrency: median tokens/s, p50/p99 latency, and the median of per-round
    paired ratios serve tokens/s / sequential tokens/s."""
    rows = {}
    for c in CONCURRENCY:
        key = f"serve_{c}"
        ratios, serve_tps, seq_tps, lat, seq_lat, cpu_ratio = [], [], [], [], [], []
        for rnd in raw["rounds"]:
            s, q = rnd[key], rnd["sequential"]
            serve_tps.append(s["tokens"] / s["wall_s"])
            seq_tps.append(q["tokens"] / q["wall_s"])
            ratios.append(serve_tps[-1] / seq_tps[-1])
            cpu_ratio.append((s["cpu_s"] / s["tokens"]) / (q["cpu_s"] / q["tokens"]))
            lat += s["latency_s"]
            seq_lat += queued_latencies(q["service_s"], c)
        rows[c] = {
            "serve_tokens_per_s": median(serve_tps),
            "sequential_tokens_per_s": median(seq_tps),
            "ratio": median(ratios),
            "ratio_runs": [round(x, 2) for x in ratios],
            "cpu_per_token_ratio": median(cpu_ratio),
            "serve_p50_ms": percentile(lat, 50) * 1000,
            "serve_p99_ms": percentile(lat, 99) * 1000,
            "sequential_p50_ms": percentile(seq_lat, 50) * 1000,
            "sequential_p99_ms": percentile(seq_lat, 99) * 1000,
        }
    return {"rows": rows}


def headline(summary: dict[str, Any]) -> dict[str, float]:
    row = summary["rows"][32]
    return {
        "serve_tokens_per_s_ratio_vs_sequential_generate_32_clients": round(row["ratio"], 3),
        "serve_p99_ms_32_clients": round(row["serve_p99_ms"], 1),
    }


def _load(load: dict[str, float] | None) -> str:
    if not load:
        return "not sampled"
    return " / ".join(f"{load[k]:.2f}" for k in ("min", "median", "max") if k in load)


def render(result: dict[str, Any]) -> list[str]:
    args = result["args"]
    lines = [
        "## Serving: `finetune serve` vs sequential `generate`",
        "",
        f"`{args['model']}` (random weights), {args['requests']} completion requests of 6-48 "
        f"words, exactly {args['max_tokens']} generated tokens each (greedy, ignore_eos), "
        f"{args['repeats']} rounds, order rotated per round, one worker process, torch threads "
        f"{args['threads']}. Server: the real app on uvicorn over loopback, max_batch 32, "
        "clients are asyncio httpx in the same process (their CPU counts against the server). "
        "Baseline: the same requests through `model.generate` one at a time; its latency "
        "under C clients is that of a one-at-a-time server (each request waits for those "
        "before it). Ratio = median over rounds of serve tokens/s / sequential tokens/s in "
        "the same round; CPU/token = the same pairing of process CPU seconds per token.",
        "",
        f"Load average: {_load(result.get('load'))}.",
        "",
        "| clients | serve tokens/s | sequential tokens/s | ratio (per round) | CPU/token vs "
        "sequential | serve p50 / p99 ms | sequential p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, row in result["rows"].items():
        lines.append(
            f"| {c} | {row['serve_tokens_per_s']:,.0f} | {row['sequential_tokens_per_s']:,.0f} | "
            f"{row['ratio']:.2f}× ({', '.join(map(str, row['ratio_runs']))}) | "
            f"{row['cpu_per_token_ratio']:.2f}× | {row['serve_p50_ms']:,.0f} / "
            f"{row['serve_p99_ms']:,.0f} | {row['sequential_p50_ms']:,.0f} / "
            f"{row['sequential_p99_ms']:,.0f} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], worker))
