"""Entry point of the pruning library: ``prune_`` and its report.

``prune_`` removes whole attention heads and FFN neurons from a model in
place, in ``iterative_steps`` steps, until the MACs removed reach
``cfg.target.macs``. Coupled channels come from torch-pruning's dependency
graph, channel scores from the configured criterion; data reaches the
algorithm only through the ``score_fn`` and ``recover`` callbacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from compress.models.stats import count_macs, count_params
from compress.prune._criteria import CRITERIA
from compress.prune._graph import (
    Infeasible,
    Layout,
    apply_pruner,
    attention_modules,
    check_forward,
    clone_with_grads,
    find_layout,
    make_pruner,
    resolve_ignored,
)
from compress.prune._search import local_plan, search_ratios
from compress.prune.config import PruneConfig

ScoreFn = Callable[[nn.Module], torch.Tensor]
"""``score_fn(model) -> scalar loss`` on calibration data; its gradients drive Taylor importance."""

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
    """

    step: int
    target: float
    ratio: float
    head_ratio: float
    ffn_ratio: float
    macs: int
    params: int


@dataclass
class PruneReport:
    """What ``prune_`` did.

    Attributes:
        params_before: Parameters before pruning.
        params_after: Parameters after pruning.
        macs_before: MACs per example before pruning.
        macs_after: MACs per example after pruning.
        steps: One row per pruning step.
        blocks: Per block (or per unit, for models without ``blocks``): heads,
            head width and FFN width after pruning.
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    steps: list[PruneStep] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def macs_removed(self) -> float:
        """Fraction of the MACs removed."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for stage metrics)."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_removed": self.macs_removed,
            "steps": [asdict(s) for s in self.steps],
            "blocks": self.blocks,
        }


def prune_(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    example_inputs: torch.Tensor,
    score_fn: ScoreFn | None = None,
    recover: RecoverFn | None = None,
) -> PruneReport:
    """Prune attention heads and FFN neurons of ``model`` in place until ``cfg.target.macs`` is removed.

    Each of ``cfg.iterative_steps`` steps removes a linear share of the way to the
    target (step ``s`` of ``n`` lands at ``target * s / n`` of the original MACs):
    it scores channels (calling ``score_fn`` and back-propagating first when the
    criterion needs gradients), searches the step's pruning ratios on copies of the
    model, prunes the model, updates each attention module's ``num_heads``, checks
    the forward pass, then calls ``recover(model, step)``. The result is a plain
    smaller model of the same family, described by ``compress.models.model_spec``.

    Args:
        model: Model to prune (mutated in place). Attention modules are submodules with
            an integer ``num_heads`` and ``nn.Linear`` ``q``, ``k``, ``v`` (tiny-vit's).
        cfg: Target, criterion, schedule and exclusions.
        example_inputs: An input batch, for graph tracing and MAC counting.
        score_fn: Returns a scalar loss on calibration data (needed for ``taylor``).
        recover: Fine-tunes the model after each step (e.g. KD from the unpruned model).

    Returns:
        A ``PruneReport`` with sizes before/after, per-step rows and per-block widths.

    Raises:
        ValueError: The target cannot be reached without emptying a layer (the message
            gives the reachable fraction), ``importance: taylor`` without ``score_fn``, an
            ``ignored_layers`` pattern that matches nothing, or a pruned model whose
            forward pass or output shape broke (names the layer).

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
    was_training = model.training
    model.eval()
    ex = example_inputs
    ex1 = example_inputs[:1]
    with torch.no_grad():
        out_shape = model(ex).shape
    ignored = resolve_ignored(model, list(cfg.ignored_layers))
    macs0 = count_macs(model, ex1)
    params0 = count_params(model)
    layout0 = find_layout(model, ex, ignored, round_to=cfg.round_to)
    heads0 = {u.name: u.size for u in layout0.of_kind("heads")}
    ffn0 = {u.name: u.size for u in layout0.of_kind("ffn")}
    importance = criterion.make()
    target = cfg.target.macs
    _check_reachable(model, ex, ex1, cfg, layout0, importance, macs0)

    report = PruneReport(params_before=params0, params_after=params0, macs_before=macs0, macs_after=macs0)
    n = cfg.iterative_steps
    reached = 0.0
    try:
        for step in range(1, n + 1):
            model.eval()
            step_target = target * step / n
            if criterion.needs_grad and score_fn is not None:
                _backprop(model, score_fn)
            layout = layout0 if step == 1 else find_layout(model, ex, ignored, round_to=cfg.round_to)
            reached, knobs, plan = _search_step(model, ex, ex1, cfg, layout, importance, macs0, step_target)
            pruner = make_pruner(
                model,
                ex,
                importance,
                layout,
                plan=plan,
                global_ratios=None if plan is not None else knobs,
                round_to=cfg.round_to,
            )
            try:
                apply_pruner(pruner, model, layout)
            except Infeasible as e:  # the same ratios passed on a copy: pruning was not deterministic
                raise RuntimeError(f"pruning step {step} diverged from its trial on a copy: {e}") from e
            model.zero_grad(set_to_none=True)
            check_forward(model, ex, out_shape)
            macs = count_macs(model, ex1)
            if abs((1.0 - macs / macs0) - reached) > 1e-9:
                raise RuntimeError(
                    f"pruning step {step} removed {1.0 - macs / macs0:.4f} of the MACs but its trial "
                    f"on a copy removed {reached:.4f}; pruning was not deterministic"
                )
            report.steps.append(
                PruneStep(
                    step=step,
                    target=step_target,
                    ratio=reached,
                    head_ratio=_removed_share(model, heads0, "heads"),
                    ffn_ratio=_removed_share(model, ffn0, "ffn"),
                    macs=macs,
                    params=count_params(model),
                )
            )
            if recover is not None:
                recover(model, step)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if abs(reached - target) > cfg.tolerance:
        raise ValueError(
            f"target.macs={target:g}: pruning reached {reached:.3f} after {n} steps, more than "
            f"tolerance={cfg.tolerance:g} away; "
            + (
                "global ranking would empty a layer first; try global_ranking: false"
                if cfg.global_ranking
                else "heads and neurons are too coarse for this target; lower round_to or move target.macs"
            )
        )
    report.macs_after = count_macs(model, ex1)
    report.params_after = count_params(model)
    report.blocks = _block_rows(model, list(heads0), list(ffn0))
    return report


def _backprop(model: nn.Module, score_fn: ScoreFn) -> None:
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = score_fn(model)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"score_fn must return a scalar loss tensor that requires grad; got {got}")
        loss.backward()


def _evaluator(
    model: nn.Module,
    ex: torch.Tensor,
    ex1: torch.Tensor,
    cfg: PruneConfig,
    layout: Layout,
    importance: Any,
    macs0: int,
    *,
    use_global: bool,
) -> tuple[Callable[[float, float], float | None], dict[Any, Any]]:
    """``evaluate(h, f)`` pruning copies of ``model``, and its cache.

    The cache maps ``(h, f, "knobs")`` to ``(removed, plan, effective_knobs)``: the plan is the
    exact per-unit counts (local ranking) or ``None`` (global ranking, use the effective knobs).
    """
    cache: dict[Any, Any] = {}

    def evaluate(head_ratio: float, ffn_ratio: float) -> float | None:
        h = head_ratio if cfg.prune_heads else 0.0
        f = ffn_ratio if cfg.prune_ffn else 0.0
        plan = None if use_global else local_plan(layout, h, f, round_to=cfg.round_to)
        key: Any = (h, f) if plan is None else tuple(sorted(plan.items()))
        if key not in cache:
            twin = clone_with_grads(model)
            pruner = make_pruner(
                twin, ex, importance, layout, plan=plan, global_ratios=(h, f), round_to=cfg.round_to
            )
            try:
                apply_pruner(pruner, twin, layout)
                removed: float | None = 1.0 - count_macs(twin, ex1) / macs0
            except Infeasible:
                removed = None
            cache[key] = (removed, plan, (h, f))
        cache[(head_ratio, ffn_ratio, "knobs")] = cache[key]
        return cache[key][0]  # type: ignore[no-any-return]

    return evaluate, cache


def _search_step(
    model: nn.Module,
    ex: torch.Tensor,
    ex1: torch.Tensor,
    cfg: PruneConfig,
    layout: Layout,
    importance: Any,
    macs0: int,
    step_target: float,
) -> tuple[float, tuple[float, float], dict[str, int] | None]:
    """Search the step's ratios; returns (removed fraction, knobs, exact plan or None for global)."""
    evaluate, cache = _evaluator(model, ex, ex1, cfg, layout, importance, macs0, use_global=cfg.global_ranking)
    best = search_ratios(
        evaluate,
        step_target,
        heads=cfg.prune_heads,
        ffn=cfg.prune_ffn,
        stop_tol=min(0.005, cfg.tolerance / 4),
    )
    if best is None:  # (0, 0) removes nothing and is always feasible, so this means a bug
        raise RuntimeError("pruning search found no feasible ratios, not even 0")
    removed, plan, knobs = cache[(*best.knobs, "knobs")]
    return removed, knobs, plan


def _check_reachable(
    model: nn.Module,
    ex: torch.Tensor,
    ex1: torch.Tensor,
    cfg: PruneConfig,
    layout: Layout,
    importance: Any,
    macs0: int,
) -> None:
    """Fail before any work when even the most pruning allowed cannot reach the target."""
    evaluate, _ = _evaluator(model, ex, ex1, cfg, layout, importance, macs0, use_global=False)
    most = evaluate(1.0, 1.0) or 0.0
    target = cfg.target.macs
    if target <= most + cfg.tolerance:
        return
    kinds = [k for k, on in (("heads", cfg.prune_heads), ("ffn", cfg.prune_ffn)) if on]
    units = [u for u in layout.units if u.kind in kinds]
    if not units:
        raise ValueError(
            f"target.macs={target:g}: nothing is prunable (no attention heads or FFN neurons outside "
            f"ignored_layers {cfg.ignored_layers or '[]'}); check prune_heads, prune_ffn and ignored_layers"
        )
    raise ValueError(
        f"target.macs={target:g} cannot be reached without pruning a layer to zero width: keeping one head "
        f"per attention and {cfg.round_to or 1} neuron(s) per FFN removes at most {most:.3f} of the MACs "
        f"(the rest is embeddings, classifier, residual-width projections and ignored layers); "
        f"set target.macs <= {math.floor(most * 100) / 100:.2f}"
        + ("" if cfg.prune_heads and cfg.prune_ffn else " or enable both prune_heads and prune_ffn")
    )


def _removed_share(model: nn.Module, before: dict[str, int], kind: str) -> float:
    total = sum(before.values())
    if not total:
        return 0.0
    mods = dict(model.named_modules())
    now = sum(mods[n].num_heads if kind == "heads" else mods[n].out_features for n in before)
    return 1.0 - now / total


def _block_rows(model: nn.Module, attn_names: list[str], ffn_names: list[str]) -> list[dict[str, Any]]:
    """Heads, head width and FFN width per ``model.blocks`` entry (per unit for other models)."""
    attn = attention_modules(model)
    mods = dict(model.named_modules())
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        rows = []
        for i in range(len(blocks)):
            prefix = f"blocks.{i}."
            a = [attn[n] for n in attn if n.startswith(prefix)]
            f = [mods[n] for n in ffn_names if n.startswith(prefix)]
            rows.append(
                {
                    "block": i,
                    "heads": sum(x.num_heads for x in a),
                    "head_dim": a[0].q.out_features // a[0].num_heads if a else 0,
                    "ffn": sum(x.out_features for x in f),
                }
            )
        return rows
    rows = [{"name": n, "heads": attn[n].num_heads, "head_dim": attn[n].q.out_features // attn[n].num_heads}
            for n in attn_names]
    rows += [{"name": n, "ffn": mods[n].out_features} for n in ffn_names]
    return rows
