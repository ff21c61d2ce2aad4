"""The evaluation gate's cost per version (issue 17): seconds per 100 eval rows to score a
candidate, the base model and a comparison version on the tiny model and the 134M one
(bench/engine.py's ``100m`` shape, random weights), and batching the three arms in the same
batches vs three separate runs (``engine.evaluation.score(..., separate=True)``).

Both metrics (teacher-forced loss and greedy exact match) on completion rows cycled from
examples/math.jsonl; fp32 CPU, ``--threads`` torch threads (the eval worker's default is 1);
rank-16 adapters on all 7 modules. Medians of ``--repeats`` runs, joint and separate
interleaved. Writes bench/results/evaluation.json and prints a table.

    python bench/evaluation.py [--rows-tiny 100] [--rows-134m 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
RESULTS = REPO / "bench" / "results" / "evaluation.json"
SHAPES = {
    "tiny": dict(hidden_size=64, layers=2, heads=4, intermediate_size=128),
    "134m": dict(hidden_size=768, layers=12, heads=12, intermediate_size=2048, vocab_size=32000),
}


def _rows(n: int) -> list:
    from store.eval_sets import parse_eval_set

    _, base = parse_eval_set((REPO / "examples" / "math.jsonl").read_bytes())
    return [base[i % len(base)] for i in range(n)]


def run_shape(name: str, n_rows: int, repeats: int, batch_rows: int) -> dict:
    from support.factories import random_adapter

    from engine.checkpoint import load_model, read_model_config
    from engine.evaluation import encode_rows, score
    from engine.tiny import init_tiny
    from engine.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        directory = init_tiny(Path(tmp) / name, seed=0, **SHAPES[name])  # type: ignore[arg-type]
        spec, args = read_model_config(directory)
        model, args = load_model(directory, "cpu", torch.float32, args=args)
        tokenizer = Tokenizer(directory)
    arms = {
        "candidate": random_adapter(spec, rank=16, seed=1),
        "base": None,
        "comparison": random_adapter(spec, rank=16, seed=2),
    }
    encoded = encode_rows(tokenizer, args, _rows(n_rows))
    score(model, args, tokenizer, encoded[:batch_rows], arms, batch_rows=batch_rows)  # warm-up
    joint, separate, same = [], [], True
    for _ in range(repeats):
        t = time.perf_counter()
        a = score(model, args, tokenizer, encoded, arms, batch_rows=batch_rows)
        joint.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = score(model, args, tokenizer, encoded, arms, batch_rows=batch_rows, separate=True)
        separate.append(time.perf_counter() - t)
        same &= all(
            abs(a[k]["loss"] - b[k]["loss"]) < 1e-4 and a[k]["exact_match"] == b[k]["exact_match"]
            for k in arms
        )
    j, s = statistics.median(joint), statistics.median(separate)
    return {
        "rows": n_rows,
        "target_tokens": sum(len(r.target) for r in encoded),
        "joint_s": round(j, 3),
        "separate_s": round(s, 3),
        "joint_s_per_100_rows": round(j * 100 / n_rows, 3),
        "separate_s_per_100_rows": round(s * 100 / n_rows, 3),
        "separate_over_joint": round(s / j, 2),
        "same_scores": same,
        "runs": {
            "joint": [round(x, 3) for x in joint],
            "separate": [round(x, 3) for x in separate],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-tiny", type=int, default=100)
    parser.add_argument("--rows-134m", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    result = {
        "threads": opts.threads,
        "batch_rows": opts.batch_rows,
        "arms": ["candidate", "base", "comparison"],
        "metrics": ["loss", "exact_match"],
        "torch": torch.__version__,
        "shapes": {},
    }
    for name, rows, repeats in (
        ("tiny", opts.rows_tiny, opts.repeats),
        ("134m", opts.rows_134m, max(1, opts.repeats - 2)),
    ):
        result["shapes"][name] = run_shape(name, rows, repeats, opts.batch_rows)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'model':<6} {'rows':>5} {'joint s/100 rows':>17} {'3 runs s/100 rows':>18} {'ratio':>6}"
    )
    for name, r in result["shapes"].items():
        print(
            f"{name:<6} {r['rows']:>5} {r['joint_s_per_100_rows']:>17} "
            f"{r['separate_s_per_100_rows']:>18} {r['separate_over_joint']:>5}x"
        )


if __name__ == "__main__":
    main()
