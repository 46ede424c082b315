"""The end-to-end experiment: build data, run the three stages, evaluate, compare, export, summarise."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flax import nnx

from data_pipelines.blind import question_only_answers
from data_pipelines.pipeline import stack_rows
from dmx_jax.hf import load_pretrained, read_config
from dmx_jax.model import Qwen25VL
from dmx_jax.model.lora import cast_base
from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.training.align import AlignModel, align_metrics, merge_vision, stack_align_rows
from dmx_jax.training.loop import MetricsWriter
from experiments.datasets import model_config_for, real_data, synthetic_data
from experiments.evaluate import Placement, evaluate_stage, example_record, vqa_grounding_metrics
from experiments.overrides import ConfigError
from experiments.report import write_outputs
from experiments.run_dir import RunDir
from experiments.stages import RunContext, StageSpec, align_recipe, load_stage_params, plan_stage, run_stage, stage_done

SEEN_AUC = 0.75  # alignment print-out: findings whose held-out head AUC reaches this are ones the tower sees

__all__ = ["model_config_for", "run_pipeline"]


def initial_model(cfg, mesh, run_dir: Path):
    """(graphdef, params, RunData): pretrained weights placed on the mesh, or a from-scratch model."""
    if cfg.hf_checkpoint:
        print(f"[model] loading {cfg.hf_checkpoint} onto mesh {dict(mesh.shape)}", flush=True)
        mcfg = with_lora(
            read_config(cfg.hf_checkpoint).replace(dtype=cfg.dtype, **cfg.memory.model_overrides()), cfg.lora
        )
        model, mcfg = load_pretrained(cfg.hf_checkpoint, mesh=mesh, config=mcfg)  # computes in cfg.dtype
        data = real_data(cfg, run_dir, mcfg) if cfg.data.source != "synthetic" else synthetic_data(cfg, run_dir, mcfg)
    else:
        data = synthetic_data(cfg, run_dir) if cfg.data.source == "synthetic" else None
        if data is None:
            raise ConfigError(
                f"data.source={cfg.data.source!r} needs hf_checkpoint (a Qwen2.5-VL folder with "
                f"tokenizer.json); from-scratch models train on the synthetic benchmark only"
            )
        mcfg = with_lora(data.model_cfg, cfg.lora)
        model = Qwen25VL(mcfg, nnx.Rngs(cfg.seed))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    if cfg.lora.rank:  # the frozen base in the compute dtype: no fp32 master copy, adapters stay fp32
        params = cast_base(params, mcfg.dtype)
    return graphdef, params, data, mcfg


def with_lora(mcfg, lora):
    return mcfg.replace(text=dataclasses.replace(mcfg.text, lora=lora)) if lora.rank else mcfg


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """One stage of the run, in order. build(stage params) -> (StageSpec, StageRecipe), called only when the
    stage trains; evaluate(stage params) -> (metrics, records) for the report, or None. enter / leave map the
    run's parameters to the stage's own and back: alignment trains the tower inside a model with a pooled head,
    the other stages train the run's parameters as they are."""

    name: str
    rows: Any
    build: Callable[[Any], tuple]
    evaluate: Callable[[Any], tuple | None]
    enter: Callable[[Any], Any] = lambda params: params
    leave: Callable[[Any, Any], Any] = lambda params, stage_params: stage_params
    unit: str = ""  # what a batch counts, for the start line ("studies", "prompts x G=4")


def run_entry(
    entry: PlanEntry, params, run_dir: RunDir | Path, ctx: RunContext, selected: bool
) -> tuple[Any, tuple | None]:
    """(the run's params after the stage, its evaluation or None). A finished stage is loaded, selected or not
    (later stages continue from it, as in a full run); a selected one is trained (resuming) and evaluated, and
    the run directory's working copy is pushed (a remote run directory: experiments.run_dir)."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    name, sdir, store = entry.name, rd.local / entry.name, rd.stage_store(entry.name)
    done = stage_done(sdir)
    if done:
        print(
            f"[{name}] "
            + (
                "finished earlier; loading its final parameters"
                if selected
                else "not selected; later stages start from its final parameters"
            ),
            flush=True,
        )
        stage_params = load_stage_params(store, entry.enter(params), ctx.mesh)
        params = entry.leave(params, stage_params)
    if not selected:
        return params, None
    if not done:
        start = entry.enter(params)
        spec, recipe = entry.build(start)
        print(f"[{name}] {spec.steps} steps, batch {spec.batch_size} {entry.unit}".rstrip(), flush=True)
        stage_params = run_stage(spec, recipe, sdir, start, entry.rows, ctx, store=store)
        params = entry.leave(params, stage_params)
    evaluated = entry.evaluate(stage_params)
    rd.push()
    return params, evaluated


def alignment_entry(cfg, data, graphdef, params, run_dir: Path, writer) -> PlanEntry:
    """The alignment stage (before SFT) on the synthetic studies: trains the vision tower + merger (and the
    decoder with decoder_readout) beside a pooled head; its held-out head metrics go to eval/align.json."""
    a = cfg.align
    agraph, astate = nnx.split(
        AlignModel(nnx.merge(graphdef, params), nnx.Rngs(cfg.seed), decoder_readout=a.decoder_readout)
    )
    head = nnx.to_pure_dict(astate)  # the head's initial parameters (the tower is shared)

    def evaluate(aparams):
        out = run_dir / "eval" / "align.json"
        if out.is_file():
            return None
        metrics = align_metrics(agraph, aparams, stack_align_rows(data.align_eval))
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"metrics": metrics}, indent=1))
        writer.write({"step": a.steps, "eval_stage": "align", **metrics})
        print(alignment_line(metrics), flush=True)
        return None

    return PlanEntry(
        "align",
        data.align,
        build=lambda aparams: (
            StageSpec("align", a.steps, a.batch_size, a.optim, a.save_every),
            align_recipe(agraph, a.head_lr),
        ),
        evaluate=evaluate,
        enter=lambda p: {**head, **{k: p[k] for k in head if k in ("vision", "text")}},
        leave=merge_vision,
        unit="studies",
    )


def alignment_line(metrics: dict) -> str:
    line = (
        f"[align] held-out label AUC {metrics['label_auc']:.3f} (accuracy {metrics['label_acc']:.3f}), "
        f"side accuracy {metrics['side_acc']:.3f}, box L1 {metrics['box_l1']:.3f}"
    )
    seen = sorted(((a, n) for n, a in metrics["label_auc_by_finding"].items() if a >= SEEN_AUC), reverse=True)
    line += f"; AUC >= {SEEN_AUC}: " + (", ".join(f"{n} {a:.2f}" for a, n in seen) or "none")
    if "decoder_label_auc" in metrics:
        line += (
            f"; decoder read-out AUC {metrics['decoder_label_auc']:.3f}, side {metrics['decoder_side_acc']:.3f}, "
            f"box L1 {metrics['decoder_box_l1']:.3f}"
        )
    return line


def run_pipeline(cfg, run_dir: RunDir | Path, stages=("align", "sft", "cold_start", "grpo")) -> str:
    """The whole run in `run_dir` (a local folder, or a RunDir whose files go to a bucket); returns summary.md."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    run_dir = rd.local
    cfg_json = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    (run_dir / "config.json").write_text(json.dumps(cfg_json, indent=2))
    writer = MetricsWriter(run_dir / "metrics.jsonl", tensorboard_dir=run_dir / "tensorboard")
    mesh = make_mesh(MeshConfig(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    graphdef, params, data, mcfg = initial_model(cfg, mesh, run_dir)
    ctx = RunContext(mesh=mesh, writer=writer, run_config=cfg_json, seed=cfg.seed)
    tok = data.tokenizer
    eval_plain, eval_reason, test_ex = data.eval_plain, data.eval_reason, data.test_examples
    results, outputs = {}, {}

    def arrays_of(rows):
        a, _ = stack_rows(rows)
        return a, [r["meta"] for r in rows]

    plain_group = (*arrays_of(eval_plain), cfg.eval.max_new_tokens)
    # stages trained to reason answer the reasoning tasks with <think>; reports and labels keep the plain prompt
    reasoning_ids = {r["meta"]["example_id"] for r in eval_reason}
    plain_only = [r for r in eval_plain if r["meta"]["example_id"] not in reasoning_ids]
    reasoning_groups = [
        (*arrays_of(rows), n)
        for rows, n in ((eval_reason, cfg.eval.reasoning_max_new_tokens), (plain_only, cfg.eval.max_new_tokens))
        if rows
    ]
    placement = Placement.on(mesh)  # held-out prompts decode split over the mesh's batch shards
    if cfg.hf_checkpoint and "sft" in stages:  # the starting checkpoint, zero-shot on the plain prompts
        results["base"], outputs["base"] = _evaluate_once(
            run_dir / "eval" / "base.json",
            "base",
            graphdef,
            params,
            [plain_group],
            tok,
            cfg,
            reasoning_ids,
            writer,
            placement,
        )

    def stage_entry(name, rows, scfg, reasoning) -> PlanEntry:
        def build(stage_params):
            return plan_stage(
                name,
                scfg,
                graphdef,
                mcfg,
                tok,
                stage_params,
                mesh=mesh,
                seed=cfg.seed,
                memory=cfg.memory,
                generation_config=_generation_config(cfg),
                validation_rows=eval_reason[: cfg.rl.eval_prompts] if name == "grpo" else None,
            )

        return PlanEntry(
            name,
            rows,
            build,
            lambda p: _evaluate_once(
                run_dir / "eval" / f"{name}.json",
                name,
                graphdef,
                p,
                reasoning_groups if reasoning else [plain_group],
                tok,
                cfg,
                reasoning_ids,
                writer,
                placement,
            ),
            unit=f"prompts x G={cfg.rl.algo.group_size}" if name == "grpo" else "",
        )

    plan = ([alignment_entry(cfg, data, graphdef, params, run_dir, writer)] if data.align is not None else []) + [
        stage_entry("sft", data.sft, cfg.sft, False),
        stage_entry("cold_start", data.cold_start, cfg.cold_start, True),
        stage_entry("grpo", data.rl, cfg.rl, True),
    ]
    for entry in plan:
        params, evaluated = run_entry(entry, params, rd, ctx, entry.name in stages)
        if evaluated is not None:
            results[entry.name], outputs[entry.name] = evaluated
    writer.close()
    baseline = question_only_baseline(data.sft, eval_plain, run_dir, cfg.eval.bootstrap) if results else None

    return write_outputs(
        cfg, run_dir, graphdef, params, mcfg, results, outputs, test_ex, export=cfg.export_hf, baseline=baseline
    )


def _evaluate_once(
    eval_file: Path, name: str, graphdef, params, groups, tok, cfg, reasoning_ids, writer, placement: Placement
) -> tuple[dict, list[dict]]:
    """(metrics, records) of `params` on the held-out groups, read back from eval_file when a run wrote it."""
    if eval_file.is_file():
        saved = json.loads(eval_file.read_text())
        return saved["metrics"], saved["records"]
    print(f"[{name}] evaluating on {sum(len(g[1]) for g in groups)} held-out prompts", flush=True)
    metrics, records = evaluate_stage(
        graphdef,
        params,
        groups,
        tok,
        n_bootstrap=cfg.eval.bootstrap,
        format_ids=reasoning_ids,
        control=cfg.eval.image_control,
        placement=placement,
    )
    save_eval(eval_file, metrics, records)
    writer.write({"step": 0, "eval_stage": name, **_flat(metrics)})
    return metrics, records


def question_only_baseline(
    train_rows, eval_rows: list[dict], run_dir: Path, n_bootstrap: int
) -> tuple[dict, list[dict]] | None:
    """(metrics, records) of data_pipelines.blind on the held-out prompts, from in-memory SFT rows (synthetic
    data; None for streamed real data), saved as eval/question_only.json."""
    if not isinstance(train_rows, list):
        return None

    test = [r["meta"] for r in eval_rows]
    answers = question_only_answers([r["meta"] for r in train_rows], test)
    metrics = vqa_grounding_metrics(answers, test, n_bootstrap)
    records = [example_record(r, a, a) for r, a in zip(test, answers)]  # its output is its answer
    save_eval(run_dir / "eval" / "question_only.json", metrics, records)
    return metrics, records


def save_eval(path: Path, metrics: dict, records: list[dict]) -> None:
    """eval/<name>.json: {"metrics", "records"} (read back by reruns, bench_ablation and the report)."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"metrics": metrics, "records": records}, indent=1, default=float))


def _generation_config(cfg) -> dict | None:
    """The checkpoint's generation_config.json (its eos ids stop generation too), when there is one."""
    path = Path(cfg.hf_checkpoint) / "generation_config.json" if cfg.hf_checkpoint else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
    return out
