"""Report Arena: pairwise LLM / rubric judging of generated reports against the reference, rated by
Bradley-Terry and Elo with bootstrap CIs over studies."""

from dmx_jax.eval.arena.cache import VerdictCache, cache_key
from dmx_jax.eval.arena.judges import OpenAICompatibleJudge, RubricJudge, load_prompt_template
from dmx_jax.eval.arena.protocol import RATING_METHOD, load_reports_jsonl, run_arena
from dmx_jax.eval.arena.rating import bradley_terry, bt_to_elo_scale, elo, win_rate_matrix
from dmx_jax.eval.arena.records import Judge, JudgeRequest, JudgeResponse, Report, parse_verdict
