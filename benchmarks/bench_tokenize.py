"""Tokenization throughput of `data prepare` against HF `tokenizers` alone, on the same text.

The reference is `Tokenizer.encode_batch` on documents already in memory, using the library's
own Rust threads on every core: the fastest the tokenizer itself goes. `data prepare` is timed
end to end (reading and decompressing, worker start-up, writing, the validation split), so the
ratio is what the pipeline around the tokenizer costs. Target: at least 0.8.

On a shared machine other load swings wall-clock figures run to run, so the two are measured
in alternation (`--rounds`), the best round of each is compared, and the CPU seconds each
spent (less sensitive to other load) are printed beside them, with the load average.

    python benchmarks/bench_tokenize.py [--limit-mb 20] [--rounds 3] [--tokenizer SPEC]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from layerwise.data.inputs import resolve_inputs
from layerwise.data.prepare import default_workers, prepare
from layerwise.data.readers import ReadStats, read_documents
from layerwise.data.tokenizer import load_tokenizer
from layerwise.training.metrics import cpu_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_CORPUS = SHARED / "corpora" / "mix.jsonl.gz"
DEFAULT_TOKENIZER = SHARED / "tokenizers" / "gpt-neox-olmo-dolma-v1_5.json"
REFERENCE_BATCH = 1000  # documents per encode_batch call: plenty of parallel work per call
TARGET_RATIO = 0.8


@dataclass(frozen=True)
class Timing:
    """One measured run: wall seconds, and CPU seconds of this process plus reaped children."""

    wall: float
    cpu: float


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def cpu_seconds() -> float:
    """Workers are reaped when prepare() returns, so their CPU time lands in RUSAGE_CHILDREN."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run: Callable[[], object]) -> tuple[Timing, object]:
    cpu, wall = cpu_seconds(), time.perf_counter()
    value = run()
    return Timing(time.perf_counter() - wall, cpu_seconds() - cpu), value


def load_texts(corpus: Path, limit_mb: float | None) -> list[str]:
    """Documents of the corpus, through the same reader `data prepare` uses, up to limit_mb."""
    texts: list[str] = []
    total = 0
    for text in read_documents(resolve_inputs([corpus]), "text", False, ReadStats()):
        if limit_mb is not None and total >= limit_mb * 1e6:
            break
        texts.append(text)
        total += len(text.encode("utf-8"))
    return texts


def write_prefix(texts: list[str], path: Path) -> Path:
    """The same documents as a .jsonl.gz, so `data prepare` also pays for decompression."""
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as handle:
        handle.writelines(json.dumps({"text": text}) + "\n" for text in texts)
    return path


def encode_all(encode: Callable[..., list], texts: Sequence[str]) -> int:
    """Encode every text with a batch method; returns the number of tokens."""
    tokens = 0
    for start in range(0, len(texts), REFERENCE_BATCH):
        encodings = encode(texts[start : start + REFERENCE_BATCH], add_special_tokens=False)
        tokens += sum(len(encoding.ids) for encoding in encodings)
    return tokens


def prepared_tokens(
    source: Path, tokenizer: str, workers: int | None, scratch: Path
) -> tuple[int, float]:
    """Run `data prepare`; returns the tokens written without EOS ids, and its own MB/s."""
    out = scratch / "out"
    result = prepare([source], tokenizer, out, workers=workers, overwrite=True, show_progress=False)
    splits = result.meta.splits.values()
    return sum(s.tokens for s in splits) - sum(s.documents for s in splits), result.mb_per_s


def report(name: str, timings: list[Timing], text_mb: float) -> float:
    """Print the best and every round of one contender; returns its best MB/s."""
    best = min(timings, key=lambda t: t.wall)
    rounds = ", ".join(f"{text_mb / t.wall:.2f}" for t in timings)
    print(
        f"{name:44s} {text_mb / best.wall:6.2f} MB/s best ({best.wall:.1f} s wall, "
        f"{best.cpu:.1f} s CPU); rounds: {rounds}"
    )
    return text_mb / best.wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--limit-mb", type=float, help="use only this many MB of text (a prefix)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating measurements of each")
    parser.add_argument("--workers", type=int, help="data prepare workers (default: all cores)")
    args = parser.parse_args(argv)

    workers = args.workers or default_workers()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores ({default_workers()} usable)")
    print(f"python {platform.python_version()}, {platform.system()} {platform.release()}")
    texts = load_texts(args.corpus, args.limit_mb)
    text_mb = sum(len(text.encode("utf-8")) for text in texts) / 1e6
    prefix = "whole file" if args.limit_mb is None else f"first {args.limit_mb:g} MB of text"
    print(f"corpus: {args.corpus} ({prefix}): {len(texts):,} documents, {text_mb:,.1f} MB of text")
    print(f"tokenizer: {args.tokenizer}; load average before: {load_average()}")

    tokenizer = load_tokenizer(args.tokenizer).tokenizer
    reference: list[Timing] = []
    fast: list[Timing] = []
    pipeline: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as name:
        scratch = Path(name)
        source = (
            args.corpus if args.limit_mb is None else write_prefix(texts, scratch / "p.jsonl.gz")
        )
        for _ in range(args.rounds):
            timing, expected = timed(lambda: encode_all(tokenizer.encode_batch, texts))
            reference.append(timing)
            timing, (written, _) = timed(
                lambda: prepared_tokens(source, args.tokenizer, args.workers, scratch)
            )
            pipeline.append(timing)
            assert written == expected, f"prepare wrote {written} tokens, encode_batch {expected}"
            fast.append(timed(lambda: encode_all(tokenizer.encode_batch_fast, texts))[0])

    print(f"load average after: {load_average()}")
    best_reference = report("HF tokenizers encode_batch (Rust threads)", reference, text_mb)
    best_pipeline = report(
        f"layerwise data prepare ({workers} workers, end to end)", pipeline, text_mb
    )
    best_fast = report("HF tokenizers encode_batch_fast (for info)", fast, text_mb)
    ratio = best_pipeline / best_reference
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"ratio prepare / encode_batch: {ratio:.2f} ({verdict} the {TARGET_RATIO} target)")
    print(f"ratio prepare / encode_batch_fast: {best_pipeline / best_fast:.2f}")


if __name__ == "__main__":
    main()
