"""Entry point of the pruning library: ``prune_`` and its report.

``prune_`` removes whole attention heads and FFN neurons (Transformers) or
channels (CNNs), and optionally whole layers, from a model in place, in
``iterative_steps`` steps, until the MACs or parameters removed reach
``cfg.target``, or, for a latency target, until a measured p95 latency holds.
Coupled channels come from torch-pruning's dependency graph, channel scores
from the configured criterion; data reaches the algorithm only through the
``score_fn``, ``recover`` and ``latency_fn`` callbacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from compress.models.stats import count_macs, count_params
from compress.prune._criteria import CRITERIA, Criterion
from compress.prune._graph import (
    InfeasiblePlanError,
    Layout,
    apply_pruner,
    attention_modules,
    check_forward,
    find_layout,
    head_width,
    heads_of,
    make_pruner,
    resolve_ignored,
)
from compress.prune._layers import drop_layers_, layer_importance
from compress.prune._plan import Planner, SearchResult
from compress.prune.config import PruneConfig

ScoreFn = Callable[[nn.Module], "torch.Tensor | Sequence[torch.Tensor]"]
"""``score_fn(model) -> scalar loss`` (or one per calibration batch) on calibration data; its gradients
drive Taylor and head-gate importance, its value layer importance."""

LatencyFn = Callable[[nn.Module], float]
"""``latency_fn(model) -> p95 ms`` of the model on the budget's target and batch (injectable: tests use
a fake one)."""

RecoverFn = Callable[[nn.Module, int], None]
"""``recover(model, step)``: fine-tune the pruned model after step ``step`` (1-based)."""


@dataclass
class PruneStep:
    """One pruning step.

    Attributes:
        step: 1-based step number.
        target: Scheduled fraction of the original MACs removed after this step.
        ratio: Fraction of the original MACs removed after this step.
        head_ratio: Fraction of the original heads removed so far.
        ffn_ratio: Fraction of the original FFN neurons removed so far.
        macs: MACs per example after the step.
        params: Parameters after the step.
        p95_ms: Measured p95 latency after the step (latency targets only).
    """

    step: int
    target: float
    ratio: float
    head_ratio: float
    ffn_ratio: float
    macs: int
    params: int
    p95_ms: float | None = None


class LatencyBudgetError(ValueError):
    """A latency budget could not be met: the model is left at the most-pruned candidate measured.

    Attributes:
        report: What was pruned and measured.
    """

    def __init__(self, message: str, report: PruneReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class PruneReport:
    """What ``prune_`` did.

    Attributes:
        params_before: Parameters before pruning.
        params_after: Parameters after pruning.
        macs_before: MACs per example before pruning.
        macs_after: MACs per example after pruning.
        steps: One row per pruning step.
        blocks: Per layer of the layer stack (or per unit, for models without one, e.g.
            CNN channel groups): heads, head width and FFN width after pruning.
        dropped_layers: Indices (in the original stack) of the whole layers dropped.
        layer_scores: Importance of each original layer (when ``layers`` was set).
        latency: For a latency target: target, batch, budget, measured p95 before and after, met.
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    steps: list[PruneStep] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    dropped_layers: list[int] = field(default_factory=list)
    layer_scores: list[float] = field(default_factory=list)
    latency: dict[str, Any] | None = None

    @property
    def macs_removed(self) -> float:
        """Fraction of the MACs removed."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def params_removed(self) -> float:
        """Fraction of the parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for stage metrics)."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_removed": self.macs_removed,
            "params_removed": self.params_removed,
            "steps": [asdict(s) for s in self.steps],
            "blocks": self.blocks,
            "dropped_layers": self.dropped_layers,
            "layer_scores": self.layer_scores,
            "latency": self.latency,
        }


@dataclass
class _Run:
    """State shared by the steps of one ``prune_`` call."""

    model: nn.Module
    cfg: PruneConfig
    criterion: Criterion
    importance: Any
    ex: torch.Tensor
    ignored: list[str]
    score_fn: ScoreFn | None
    out_shape: torch.Size
    metric: str
    value0: float
    original: dict[str, int] = field(default_factory=dict)

    def layout(self) -> Layout:
        if self.score_fn is not None and self.criterion.needs_grad:
            _score(self.criterion, self.importance, self.model, self.score_fn)
        return find_layout(
            self.model,
            self.ex,
            self.ignored,
            round_to=self.cfg.round_to,
            importance=self.importance if self.cfg.global_ranking else None,
        )

    def planner(self, layout: Layout) -> Planner:
        return Planner(
            layout,
            original=self.original,
            macs0=int(self.value0),
            round_to=self.cfg.round_to,
            global_ranking=self.cfg.global_ranking,
            heads=self.cfg.prune_heads,
            ffn=self.cfg.prune_ffn,
            metric=self.metric,
        )

    def step(
        self, step: int, target: float, cap: tuple[float, float] | None, layout: Layout | None = None
    ) -> PruneStep:
        """Prune to ``target`` (cumulative fraction of the original metric removed) and describe it."""
        self.model.eval()
        layout = layout if layout is not None else self.layout()
        found = self.planner(layout).search(target, accept_tol=self.cfg.tolerance / 2, cap=cap)
        plan = found.best.plan
        if plan:
            pruner = make_pruner(self.model, self.ex, self.importance, layout, plan)
            try:
                apply_pruner(pruner, self.model, layout, plan)
            except InfeasiblePlanError as e:  # plans respect minimum widths, so this is a bug
                raise RuntimeError(f"pruning step {step} went below a minimum width: {e}") from e
        self.model.zero_grad(set_to_none=True)
        check_forward(self.model, self.ex, self.out_shape)
        macs = count_macs(self.model, self.ex[:1])
        params = count_params(self.model)
        now = macs if self.metric == "macs" else params
        return PruneStep(
            step=step,
            target=target,
            ratio=1.0 - now / self.value0,
            head_ratio=found.best.head_ratio,
            ffn_ratio=found.best.ffn_ratio,
            macs=macs,
            params=params,
        )


def prune_(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    example_inputs: torch.Tensor,
    score_fn: ScoreFn | None = None,
    recover: RecoverFn | None = None,
    latency_fn: LatencyFn | None = None,
) -> PruneReport:
    """Prune ``model`` in place to ``cfg.target``: heads and FFN neurons, CNN channels, whole layers.

    With ``cfg.layers`` the least important whole layers of the layer stack go first
    (importance = calibration loss increase when a layer is skipped, or the output change
    without ``score_fn``). Then, for a ``macs`` / ``params`` target, each of
    ``cfg.iterative_steps`` steps removes a linear share of the way to the target (step
    ``s`` of ``n`` lands at ``target * s / n`` of the original metric): it scores channels
    (calling ``score_fn`` and back-propagating first when the criterion needs gradients),
    searches the step's head and width ratios against exact per-layer prices (the most
    balanced split that lands within half the tolerance), prunes through torch-pruning,
    updates every head-count attribute, checks the forward pass and output shape, then
    calls ``recover(model, step)``. For a ``latency`` target it removes
    ``target.latency.step`` more of the MACs per step and measures ``latency_fn(model)``
    after each recovery, until the p95 budget holds. The result is a plain smaller model of
    the same family, described by ``compress.models.model_spec``.

    Args:
        model: Model to prune (mutated in place): tiny-vit, a Hugging Face BERT-family or timm
            ViT (attention heads, FFN neurons), or a CNN (channels).
        cfg: Target, criterion, schedule and exclusions.
        example_inputs: An input batch, for graph tracing and MAC counting.
        score_fn: Returns a scalar loss (or one per batch) on calibration data (needed for
            ``taylor`` and ``head_gate``; gives layer importance as a loss increase).
        recover: Fine-tunes the model after each step (e.g. KD from the unpruned model).
        latency_fn: Measures the model's p95 latency in ms (needed for a latency target).

    Returns:
        A ``PruneReport`` with sizes before/after, per-step rows and per-layer widths.

    Raises:
        ValueError: The target cannot be reached without emptying a layer or is between
            two reachable values further apart than the tolerance (checked before any
            pruning; the message gives the reachable values), a criterion that needs
            gradients without ``score_fn`` or that does not apply to the model, a latency
            target without ``latency_fn``, an ``ignored_layers`` pattern that matches
            nothing, or a pruned model whose forward pass or output shape broke (names the layer).
        LatencyBudgetError: The latency budget still fails at the most pruning allowed (the
            model is left at that candidate; the error carries the report).

    Example:
        >>> from compress.models import build_model
        >>> m = build_model("tiny-vit", {"dim": 64, "depth": 2})
        >>> rep = prune_(m, PruneConfig(target={"macs": 0.5}), example_inputs=torch.randn(2, 1, 8, 8))
        >>> abs(rep.macs_removed - 0.5) <= 0.02
        True
    """
    criterion = CRITERIA.get(cfg.importance)
    if criterion.needs_grad and score_fn is None:
        raise ValueError(
            f"importance: {cfg.importance} scores channels with gradients and needs score_fn "
            "(model -> loss on calibration data); pass one or use importance: magnitude"
        )
    if criterion.check is not None and (why := criterion.check(model)) is not None:
        raise ValueError(why)
    latency = cfg.target.latency
    if latency is not None and latency_fn is None:
        raise ValueError(
            f"target.latency ({latency.target}, batch {latency.batch}, p95_ms {latency.p95_ms}) needs "
            "latency_fn (model -> measured p95 ms); the prune stage builds one from the deploy target"
        )
    was_training = model.training
    ex = example_inputs
    try:
        model.eval()
        with torch.no_grad():
            out_shape = model(ex).shape
        ignored = resolve_ignored(model, list(cfg.ignored_layers))
        params0 = count_params(model)
        macs0 = count_macs(model, ex[:1])
        report = PruneReport(params_before=params0, params_after=params0, macs_before=macs0, macs_after=macs0)
        if cfg.layers is not None:
            _drop_layers(model, cfg, ex, score_fn, report)
            ignored = resolve_ignored(model, list(cfg.ignored_layers))
        metric = cfg.target.metric
        run = _Run(
            model=model,
            cfg=cfg,
            criterion=criterion,
            importance=criterion.make(p=cfg.p),
            ex=ex,
            ignored=ignored,
            score_fn=score_fn,
            out_shape=out_shape,
            metric=metric,
            value0=float(macs0 if metric == "macs" else params0),
        )
        layout = run.layout()
        run.original = {u.name: u.size for u in layout.units}
        # The report covers ignored units too (they are absent from the layout).
        described = (
            list(run.original)
            if not cfg.ignored_layers
            else [u.name for u in find_layout(model, ex, resolve_ignored(model, []), round_to=None).units]
        )
        if latency is not None:
            assert latency_fn is not None
            _latency_loop(run, layout, report, latency_fn, recover)
        else:
            target = cfg.target.fraction
            assert target is not None
            n = cfg.iterative_steps
            final = _check_reachable(run.planner(layout), cfg)
            for step in range(1, n + 1):
                row = run.step(
                    step,
                    target * step / n,
                    final.best.knobs if step < n else None,
                    layout if step == 1 else None,
                )
                report.steps.append(row)
                if recover is not None:
                    recover(model, step)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    report.macs_after = count_macs(model, ex[:1])
    report.params_after = count_params(model)
    report.blocks = _block_rows(model, described)
    if latency is None:
        target = cfg.target.fraction
        assert target is not None
        removed = report.macs_removed if metric == "macs" else report.params_removed
        planned = report.steps[-1].target if report.steps else 0.0
        if abs(removed - target) > cfg.tolerance:
            # Plans are priced exactly; this means a layer's cost does not follow its widths.
            raise ValueError(
                f"target.{metric}={target:g}: pruning removed {removed:.3f} of the {metric}, more than "
                f"tolerance={cfg.tolerance:g} away (planned {planned:.3f}); "
                f"the model has {metric} that do not scale with its prunable widths"
            )
    elif report.latency is not None and not report.latency["met"]:
        raise LatencyBudgetError(report.latency["message"], report)
    return report


def _latency_loop(
    run: _Run, layout: Layout, report: PruneReport, latency_fn: LatencyFn, recover: RecoverFn | None
) -> None:
    """Prune ``latency.step`` more MACs per step, recovering and measuring after each, until p95 holds."""
    budget = run.cfg.target.latency
    assert budget is not None
    measured = [float(latency_fn(run.model))]
    planner = run.planner(layout)
    most = min(planner.most().removed, budget.max_macs)
    info: dict[str, Any] = {
        "target": budget.target,
        "batch": budget.batch,
        "p95_ms_budget": budget.p95_ms,
        "p95_ms_before": measured[0],
    }
    step, frac = 0, 0.0
    while measured[-1] > budget.p95_ms and frac < most - 1e-9:
        step += 1
        frac = min(frac + budget.step, most)
        row = run.step(step, frac, None, layout if step == 1 else None)
        if recover is not None:
            recover(run.model, step)
        row.p95_ms = float(latency_fn(run.model))
        measured.append(row.p95_ms)
        report.steps.append(row)
    met = measured[-1] <= budget.p95_ms
    removed = 1.0 - count_macs(run.model, run.ex[:1]) / report.macs_before
    if met:
        msg = f"p95 {measured[-1]:.3f} ms <= {budget.p95_ms} ms on {budget.target} at batch {budget.batch}"
    else:
        msg = (
            f"target.latency: p95 {measured[-1]:.3f} ms > budget {budget.p95_ms} ms on '{budget.target}' at "
            f"batch {budget.batch} after removing {removed:.3f} of the MACs (the most allowed: "
            f"{most:.3f}, from max_macs={budget.max_macs:g} and the minimum widths); measured p95 per step "
            f"{[round(v, 3) for v in measured]} ms; raise p95_ms, allow more with max_macs, drop layers "
            "(layers: {drop: N}) or deploy on a faster target"
        )
    info.update({"p95_ms_after": measured[-1], "met": met, "macs_removed": removed, "message": msg})
    report.latency = info


def _drop_layers(
    model: nn.Module, cfg: PruneConfig, ex: torch.Tensor, score_fn: ScoreFn | None, report: PruneReport
) -> None:
    assert cfg.layers is not None
    _, scores = layer_importance(model, ex, score_fn=score_fn)
    n_drop = cfg.layers.count(len(scores))
    if n_drop >= len(scores):
        raise ValueError(
            f"layers.drop={cfg.layers.drop:g} removes {n_drop} of the {len(scores)} layers; keep at least one"
        )
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    drop = sorted(order[:n_drop])
    if drop:
        drop_layers_(model, drop)
    report.dropped_layers = drop
    report.layer_scores = scores


def _score(criterion: Criterion, importance: Any, model: nn.Module, score_fn: ScoreFn) -> None:
    def backprop(after_each: Callable[[], None] | None) -> None:
        _backprop(model, score_fn, after_each)

    if criterion.prepare is not None:
        criterion.prepare(importance, model, backprop)
    else:
        backprop(None)


def _backprop(model: nn.Module, score_fn: ScoreFn, after_each: Callable[[], None] | None = None) -> None:
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out = score_fn(model)
        losses = list(out) if isinstance(out, (list, tuple)) else [out]
        for loss in losses:
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
                got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(f"score_fn must return a scalar loss tensor that requires grad; got {got}")
            loss.backward()
            if after_each is not None:
                after_each()


def _check_reachable(planner: Planner, cfg: PruneConfig) -> SearchResult:
    """The final plan as seen now; fails before any pruning when the target is out of reach."""
    metric = cfg.target.metric
    target = cfg.target.fraction
    assert target is not None
    key = f"target.{metric}"
    layout = planner.layout
    if not (planner.heads or planner.ffn):
        raise ValueError(
            f"{key}={target:g}: nothing is prunable: no attention heads "
            f"(prune_heads={cfg.prune_heads}) or FFN neurons / channels (prune_ffn={cfg.prune_ffn}) outside "
            f"ignored_layers {layout.ignored}"
        )
    most = planner.most().removed
    if target > most + cfg.tolerance:
        raise ValueError(
            f"{key}={target:g} cannot be reached without pruning a layer to zero width: keeping one "
            f"head per attention and {cfg.round_to or 1} neuron(s) / channel(s) per group removes at most "
            f"{most:.3f} of the {metric} (the rest is embeddings, classifier, residual-width projections and "
            f"ignored layers); set {key} <= {math.floor(most * 100) / 100:.2f}"
            + ("" if cfg.prune_heads and cfg.prune_ffn else " or enable both prune_heads and prune_ffn")
        )
    found = planner.search(target, accept_tol=cfg.tolerance / 2)
    if abs(found.best.removed - target) > cfg.tolerance:
        near = [f"{c.removed:.3f}" for c in (found.below, found.above) if c is not None]
        coarse = "whole heads" + (
            f" and widths in multiples of round_to={cfg.round_to}" if cfg.round_to else ""
        )
        fixes = [f"set {key} to one of them"]
        if not cfg.prune_ffn:
            fixes.append("enable prune_ffn")
        if cfg.round_to:
            fixes.append("lower round_to")
        raise ValueError(
            f"{key}={target:g} is not reachable within tolerance={cfg.tolerance:g}: the nearest "
            f"reachable fractions are {' and '.join(near)} ({coarse} are coarse); {', or '.join(fixes)}"
        )
    return found


def _width(m: nn.Module) -> int:
    return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)


def _block_rows(model: nn.Module, unit_names: list[str]) -> list[dict[str, Any]]:
    """Heads, head width and FFN width per layer of the layer stack (per unit for other models)."""
    from compress.distill.student import layer_stack

    attn = attention_modules(model)
    mods = dict(model.named_modules())
    ffn_names = [n for n in unit_names if n not in attn and n in mods]
    try:
        stack_name, stack = layer_stack(model)
    except ValueError:
        stack_name, stack = "", None
    if stack is not None and attn:
        rows = []
        for i in range(len(stack)):
            prefix = f"{stack_name}.{i}."
            a = [attn[n] for n in attn if n.startswith(prefix)]
            f = [mods[n] for n in ffn_names if n.startswith(prefix)]
            rows.append(
                {
                    "block": i,
                    "heads": sum(heads_of(x) for x in a),
                    "head_dim": head_width(a[0]) if a else 0,
                    "ffn": sum(_width(x) for x in f),
                }
            )
        return rows
    rows = [
        {"name": n, "heads": heads_of(attn[n]), "head_dim": head_width(attn[n])}
        for n in unit_names
        if n in attn
    ]
    key = "ffn" if attn else "channels"
    rows += [{"name": n, key: _width(mods[n])} for n in ffn_names]
    return rows
