"""python -m data_pipelines.cold_start --adapter NAME --root DIR --out FILE.jsonl --base-url URL --model M

Loads a dataset with a data_pipelines adapter, asks the teacher for a grounded trace per example, writes the
accepted samples as generic JSONL (see output.py) and prints the summary as JSON. The API key is read from
the environment variable named by --api-key-env, never from the command line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys

from data_pipelines.adapters import ADAPTERS, load_dataset
from data_pipelines.cold_start.config import TeacherConfig
from data_pipelines.cold_start.output import write_jsonl
from data_pipelines.cold_start.synthesize import synthesize


def parse_args(argv=None) -> argparse.Namespace:
    d = TeacherConfig("http://x", "x")  # defaults
    p = argparse.ArgumentParser(prog="python -m data_pipelines.cold_start", description=__doc__.split("\n\n")[1])
    p.add_argument("--adapter", required=True, choices=sorted(ADAPTERS))
    p.add_argument("--root", required=True, help="dataset root (or dump file for the generic adapter)")
    p.add_argument("--out", required=True, help="output JSONL of accepted samples")
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the adapter's tasks")
    p.add_argument("--limit", type=int, default=None, help="first N examples only")
    p.add_argument("--cache-dir", default=None, help="reply cache (default: OUT.cache)")
    p.add_argument("--api-key-env", default=d.api_key_env)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--timeout", type=float, default=d.timeout_s)
    p.add_argument("--max-retries", type=int, default=d.max_retries)
    p.add_argument("--backoff-base", type=float, default=d.backoff_base_s)
    p.add_argument("--backoff-cap", type=float, default=d.backoff_cap_s)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--template", default=None, help="teacher prompt template file")
    p.add_argument("--send-images", action="store_true", help="attach resized images as data URLs")
    p.add_argument("--retry-failed", action="store_true", help="re-request cached timeouts / HTTP errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = TeacherConfig(
        base_url=args.base_url,
        model=args.model,
        api_key_env=args.api_key_env,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        backoff_base_s=args.backoff_base,
        backoff_cap_s=args.backoff_cap,
        concurrency=args.concurrency,
        prompt_template=args.template,
        send_images=args.send_images,
    )
    kwargs = {"split": args.split}
    if args.tasks:
        kwargs["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    examples = load_dataset(args.adapter, args.root, **kwargs)
    if args.limit is not None:
        examples = itertools.islice(examples, args.limit)
    result = synthesize(
        examples, config, cache_dir=args.cache_dir or f"{args.out}.cache", retry_failed=args.retry_failed
    )
    written = write_jsonl(result.accepted, args.out)
    json.dump({**result.summary, "written": written, "out": args.out}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
