"""Cold-start reasoning synthesis (paper.md §4) through an OpenAI-compatible teacher endpoint.

    result = synthesize(examples, TeacherConfig(base_url=..., model=...), cache_dir="teacher_cache")
    result.accepted  # Examples whose target / meta['reasoning'] is a validated grounded trace
    result.summary   # counts: accepted, rejected per reason, requests, cache hits

CLI: python -m data_pipelines.cold_start --adapter NAME --root DIR --out FILE.jsonl --base-url URL --model M
"""

from data_pipelines.cold_start.client import FAILURES, Completion, TeacherClient
from data_pipelines.cold_start.config import TeacherConfig
from data_pipelines.cold_start.output import read_jsonl_columns, write_jsonl
from data_pipelines.cold_start.prompt import load_template
from data_pipelines.cold_start.synthesize import REJECTIONS, SynthesisResult, synthesize
from data_pipelines.cold_start.trace import answers_agree, parse_reply, to_stored_frame

__all__ = [
    "Completion",
    "FAILURES",
    "REJECTIONS",
    "SynthesisResult",
    "TeacherClient",
    "TeacherConfig",
    "answers_agree",
    "load_template",
    "parse_reply",
    "read_jsonl_columns",
    "synthesize",
    "to_stored_frame",
    "write_jsonl",
]
