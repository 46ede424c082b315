"""python -m dmx_jax.eval.arena --references ref.jsonl --system NAME=gen.jsonl ... [--rubric]
[--openai BASE_URL MODEL] [--cache DIR] [--out result.json]: run the Report Arena and print the ranking."""

from __future__ import annotations

import argparse
import json
import sys

from dmx_jax.eval.arena.judges import OpenAICompatibleJudge, RubricJudge
from dmx_jax.eval.arena.protocol import load_reports_jsonl, run_arena


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmx_jax.eval.arena", description=__doc__)
    parser.add_argument("--references", required=True, help="JSONL of {study_id, report[, boxes]}")
    parser.add_argument(
        "--system",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a system's generations as JSONL (repeat, at least twice)",
    )
    parser.add_argument("--rubric", action="store_true", help="add the offline rubric judge")
    parser.add_argument(
        "--openai",
        nargs=2,
        action="append",
        default=[],
        metavar=("BASE_URL", "MODEL"),
        help="add an OpenAI-compatible judge (key from $DMX_JUDGE_API_KEY); repeatable",
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--cache", default=None, help="verdict cache directory (reruns cost nothing)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the full result as JSON here")
    args = parser.parse_args(argv)
    systems = {}
    for spec in args.system:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--system {spec!r}: expected NAME=PATH")
        systems[name] = load_reports_jsonl(path)
    judges = [RubricJudge()] if args.rubric else []
    judges += [OpenAICompatibleJudge(url, model, concurrency=args.concurrency) for url, model in args.openai]
    if not judges:
        parser.error("choose at least one judge: --rubric and/or --openai BASE_URL MODEL")
    result = run_arena(
        load_reports_jsonl(args.references),
        systems,
        judges,
        cache=args.cache,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    combined = result["combined"]
    print(
        f"judges: {', '.join(combined['judges'])}; studies: {result['n_studies']}; "
        f"comparisons: {combined['n_comparisons']}"
    )
    for name in combined.get("ranking", []):
        r = combined["ratings"][name]
        lo, hi = r["bt_elo_scale_ci"]
        print(f"{name:24s} BT {r['bt_elo_scale']:7.1f} [{lo:7.1f}, {hi:7.1f}]  Elo {r['elo']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
