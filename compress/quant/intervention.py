"""Teacher Intervention (TI) for quantization-aware training, through hooks.

Kim, Shim, Park, Sung, Choi, "Teacher Intervention: Improving Convergence of
Quantization Aware Training for Ultra-Low Precision Transformers", EACL 2023
(arXiv 2302.11812); behaviour taken from the authors' code
(``MarsJacobs/ti-kd-qat@e9849cb``, summarised in METHODS.md §1).

From ONE forward of the full-precision model (the *TI teacher*, the model
entering QAT, in eval mode under ``no_grad``) on the same batch, a signal of
every attention sub-layer replaces the quantized student's own:

========== ======= ======================================================= ==============================
mode       paper   replaced in every student block                         detached (stop-gradient)
========== ======= ======================================================= ==============================
output     TI-O    output of the output projection ``o`` (AO)              inputs of ``q``, ``k``, ``v``
context    TI-C    input of ``o`` (per-head context probs·V, heads merged) inputs of ``q``, ``k``, ``v``
map        TI-M    output of ``softmax`` (attention probabilities); they   inputs of ``q``, ``k``
                   then pass the student's quantizer at ``pv``
block_input (ours) input of every block (block 0: the embedding output)    (the replaced input is constant)
none       --      nothing (plain KD-QAT with the same loss)               nothing
========== ======= ======================================================= ==============================

``block_input`` is our extension for models without attention (it only needs
``model.blocks``): the FP model's block ``l-1`` output replaces the quantized
student's block ``l`` input, so each block trains on clean inputs.

The loss (both steps, ``InterventionLossesConfig``): soft cross-entropy on
logits (T = 1) + hidden-state MSE (embedding output and every block output) +
attention-score MSE (pre-softmax scores, entries ``<= -100``, i.e. masked,
zeroed) + attention-sub-layer-output MSE + optional ground-truth CE, each
summed over layers with weight 1 as in the code. Pre-LN adaptation: the
paper's models are post-LN, where the sub-layer output is ``LN(AO + X)``; for
our pre-LN blocks (``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``) we use the
residual stream right after attention, ``x + attn(ln1(x))`` = the input of
``ln2``. How the authors adapted TI to their pre-LN ViT is not published.

Where a model's attention lives is described by an ``AttentionLayout`` per
block; ``ATTENTION_LAYOUTS`` holds one finder per architecture (the built-in
``tiny-vit``). No model code is edited.

Schedule (``intervention_schedule``): step 1 = ``s`` optimizer steps with
intervention (``gradual``: output while ``step < s/6``, context while
``step < s/3``, then map, exactly the code's comparisons), step 2 = ``N - s``
steps without, with a fresh optimizer and learning-rate schedule
(``train_with_intervention``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from compress._utils.io import atomic_torch_save, sha256_json
from compress._utils.progress import SILENT, Reporter
from compress._utils.registry import Registry
from compress.data.base import TaskData
from compress.models.exposed import expose
from compress.distill.features import Side, Tap, capture_features, first_tensor
from compress.distill.layouts import find_layout
from compress.distill.losses import soft_cross_entropy
from compress.quant.config import InterventionLossesConfig, InterventionMode, TeacherInterventionConfig
from compress.train.config import TrainConfig
from compress.train.loop import LossFn, fit, steps_per_epoch

StepMode = Literal["none", "output", "context", "map", "block_input"]
"""The intervention in force during one optimizer step."""

STEP_MODES: tuple[StepMode, ...] = ("none", "output", "context", "map", "block_input")

PAPER_NAMES: dict[str, str] = {"output": "TI-O", "context": "TI-C", "map": "TI-M", "gradual": "TI-G"}
"""Our mode names and the paper's."""

MASKED_SCORE = -100.0
"""Scores at or below this are masked positions; both sides are zeroed before the score MSE (TernaryBERT)."""


# --- where the signals live ------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionLayout:
    """Qualified module names of one block's attention signals.

    Attributes:
        block: The block (its input/output are the hidden states).
        q: Query projection (its input is detached under output/context/map).
        k: Key projection (detached like ``q``).
        v: Value projection (its input is detached under output/context).
        o: Output projection: its input is the merged per-head context, its output AO.
        scores: Module whose output is the pre-softmax scores (the Q·Kᵀ matmul, already scaled).
        probs: Module whose output is the attention probabilities (the softmax).
        after_attention: Module whose input (``after_attention_side: input``) or output
            (``output``) is the attention sub-layer's output: pre-LN, the residual stream
            right after attention (``ln2``'s input, ``x + attn(ln1(x))``); post-LN (BERT),
            ``LN(AO + x)`` (the sub-layer LayerNorm's output), as in the paper.
        after_attention_side: Which side of ``after_attention`` is read.
    """

    block: str
    q: str
    k: str
    v: str
    o: str
    scores: str
    probs: str
    after_attention: str
    after_attention_side: Side = "input"


ATTENTION_LAYOUTS: Registry[Callable[[nn.Module], list[AttentionLayout] | None]] = Registry(
    "attention layout"
)
"""Finders ``finder(model) -> one AttentionLayout per block, or None`` (not this architecture)."""


@ATTENTION_LAYOUTS.register("tiny-vit")
def _tiny_vit_layout(model: nn.Module) -> list[AttentionLayout] | None:
    """``blocks.i.attn.{q,k,v,o,qk,softmax,pv}`` and ``blocks.i.ln2`` (``compress.models.tiny_vit``)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return None
    out = []
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        parts = ("q", "k", "v", "o", "qk", "softmax", "pv")
        if (
            attn is None
            or not hasattr(blk, "ln2")
            or not all(isinstance(getattr(attn, p, None), nn.Module) for p in parts)
        ):
            return None
        b = f"blocks.{i}"
        out.append(
            AttentionLayout(
                block=b,
                q=f"{b}.attn.q",
                k=f"{b}.attn.k",
                v=f"{b}.attn.v",
                o=f"{b}.attn.o",
                scores=f"{b}.attn.qk",
                probs=f"{b}.attn.softmax",
                after_attention=f"{b}.ln2",
            )
        )
    return out


@ATTENTION_LAYOUTS.register("hf-bert")
def _hf_bert_layout(model: nn.Module) -> list[AttentionLayout] | None:
    """Hugging Face BERT family with exposed attention (``compress.models.hf_attention``), any prefix.

    Per layer ``L = *encoder.layer.<i>``: ``L.attention.self.{query,key,value}``, the output
    projection ``L.attention.output.dense`` (its input is the merged context, its output AO before
    dropout, residual and LayerNorm), scores = ``L.attention.self.score_mask`` (scaled Q·Kᵀ plus
    the additive padding mask), probabilities = ``L.attention.self.softmax``, and the sub-layer
    output ``LN(AO + x)`` = the output of ``L.attention.output.LayerNorm`` (post-LN, the paper's).
    ``None`` when the model is not BERT-like or its attention is not exposed.
    """

    def per_block(b: str) -> AttentionLayout:
        sa, ao = f"{b}.attention.self", f"{b}.attention.output"
        return AttentionLayout(
            block=b,
            q=f"{sa}.query",
            k=f"{sa}.key",
            v=f"{sa}.value",
            o=f"{ao}.dense",
            scores=f"{sa}.score_mask",
            probs=f"{sa}.softmax",
            after_attention=f"{ao}.LayerNorm",
            after_attention_side="output",
        )

    return _exposed_layout(model, "hf-bert", per_block)


@ATTENTION_LAYOUTS.register("timm-vit")
def _timm_vit_layout(model: nn.Module) -> list[AttentionLayout] | None:
    """timm ViT with exposed attention (``compress.models.timm_attention``), any prefix.

    Per block ``B = *blocks.<i>``: Q/K/V inputs ``B.attn.{q,k,v}_in`` (the fused ``qkv`` then runs per
    input when some are detached), output projection ``B.attn.proj``, scores ``B.attn.qk``,
    probabilities ``B.attn.softmax``, and the pre-LN residual after attention = the input of
    ``B.norm2``. ``None`` when the model is not a timm ViT or its attention is not exposed.
    """

    def per_block(b: str) -> AttentionLayout:
        a = f"{b}.attn"
        return AttentionLayout(
            block=b,
            q=f"{a}.q_in",
            k=f"{a}.k_in",
            v=f"{a}.v_in",
            o=f"{a}.proj",
            scores=f"{a}.qk",
            probs=f"{a}.softmax",
            after_attention=f"{b}.norm2",
        )

    return _exposed_layout(model, "timm-vit", per_block)


def _exposed_layout(
    model: nn.Module, feature_layout: str, per_block: Callable[[str], AttentionLayout]
) -> list[AttentionLayout] | None:
    """One ``AttentionLayout`` per layer of ``model``'s feature layout ``feature_layout`` (``per_block``
    gets the layer's name), or ``None`` when the model has another layout or a named module is
    missing (its attention is not exposed)."""
    layout = find_layout(model)
    if layout is None or layout.name != feature_layout:
        return None
    mods = dict(model.named_modules())
    out = [per_block(lay.hidden.module) for lay in layout.layers]
    parts = ("block", "q", "k", "v", "o", "scores", "probs", "after_attention")
    if not all(getattr(lay, p) in mods for lay in out for p in parts):
        return None
    return out


def find_attention_layout(model: nn.Module) -> list[AttentionLayout] | None:
    """The attention layout from the first registered finder that recognises ``model``, else ``None``."""
    for _, finder in ATTENTION_LAYOUTS.items():
        layout = finder(model)
        if layout is not None:
            return layout
    return None


def block_names(model: nn.Module) -> list[str]:
    """The blocks whose inputs/outputs are the hidden states, in forward order.

    From the attention layout when there is one (``blocks.<i>`` of tiny-vit,
    ``*encoder.layer.<i>`` of BERT), else from the model's feature layout
    (``compress.distill.layouts``: e.g. a ResNet's ``layer1..layer4``, whose first
    input is the stem's output), else ``model.blocks``.

    Raises:
        ValueError: None of these finds the model's layers.
    """
    layout = find_attention_layout(model)
    if layout is not None:
        return [lay.block for lay in layout]
    features = find_layout(model)
    if features is not None and features.layers:
        return [lay.hidden.module for lay in features.layers]
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(
            f"{type(model).__name__} has no known layer stack (no registered feature layout and no "
            "'blocks' ModuleList); Teacher Intervention needs the model's layers (hidden states are their "
            "inputs and outputs): register a feature layout (docs/distillation.md)"
        )
    return [f"blocks.{i}" for i in range(len(blocks))]


# --- schedule --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulePhase:
    """Optimizer steps ``[from_step, to_step)`` run with intervention ``mode``."""

    mode: StepMode
    from_step: int
    to_step: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form for metrics (``ti_schedule``)."""
        return {"mode": self.mode, "from_step": self.from_step, "to_step": self.to_step}


def intervention_schedule(mode: InterventionMode, step1_steps: int, total_steps: int) -> list[SchedulePhase]:
    """The mode in force at every optimizer step of a two-step TI run, as phases.

    ``gradual`` follows the code's comparisons ``step < s/6`` (output) and
    ``step < s/3`` (context), map for the rest of step 1; step 2
    (``[s, total_steps)``) has mode ``none``. Empty phases are left out.

    Args:
        mode: ``teacher_intervention.mode``.
        step1_steps: ``s``.
        total_steps: ``N`` (step 1 + step 2).

    Returns:
        Consecutive phases covering ``[0, total_steps)``.

    Raises:
        ValueError: ``s > N`` or ``mode`` is unknown.

    Example:
        >>> [p.to_dict() for p in intervention_schedule("gradual", 60, 540)]  # doctest: +NORMALIZE_WHITESPACE
        [{'mode': 'output', 'from_step': 0, 'to_step': 10},
         {'mode': 'context', 'from_step': 10, 'to_step': 20},
         {'mode': 'map', 'from_step': 20, 'to_step': 60},
         {'mode': 'none', 'from_step': 60, 'to_step': 540}]
    """
    s, n = step1_steps, total_steps
    if s < 0 or s > n:
        raise ValueError(
            f"teacher_intervention.steps: got {s}; expected 0 <= steps <= {n} (the stage's total)"
        )
    if mode == "gradual":
        o_end, c_end = math.ceil(s / 6), math.ceil(s / 3)
        phases = [
            SchedulePhase("output", 0, o_end),
            SchedulePhase("context", o_end, c_end),
            SchedulePhase("map", c_end, s),
        ]
    elif mode in STEP_MODES:
        phases = [SchedulePhase(mode, 0, s)]  # type: ignore[arg-type]
    else:
        raise ValueError(
            f"unknown teacher_intervention.mode {mode!r}; valid: gradual, {', '.join(STEP_MODES)}"
        )
    phases.append(SchedulePhase("none", s, n))
    return [p for p in phases if p.to_step > p.from_step]


def mode_at(schedule: list[SchedulePhase], step: int) -> StepMode:
    """The mode of optimizer step ``step`` (0-based); ``none`` outside the schedule."""
    for p in schedule:
        if p.from_step <= step < p.to_step:
            return p.mode
    return "none"


# --- hooks -----------------------------------------------------------------------------------------


def _teacher_taps(blocks: list[str], layout: list[AttentionLayout] | None) -> dict[str, Tap]:
    taps = {"h0": Tap(blocks[0], "input")}
    taps.update({f"h{i + 1}": Tap(b, "output") for i, b in enumerate(blocks)})
    for i, lay in enumerate(layout or []):
        taps[f"scores{i}"] = Tap(lay.scores, "output")
        taps[f"after_attention{i}"] = Tap(lay.after_attention, lay.after_attention_side)
        taps[f"probs{i}"] = Tap(lay.probs, "output")
        taps[f"context{i}"] = Tap(lay.o, "input")
        taps[f"ao{i}"] = Tap(lay.o, "output")
    return taps


def _student_taps(blocks: list[str], layout: list[AttentionLayout] | None) -> dict[str, Tap]:
    keep = ("h", "scores", "after_attention")
    return {k: t for k, t in _teacher_taps(blocks, layout).items() if k.rstrip("0123456789") in keep}


def _checked(name: str, replacement: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    if replacement.shape != original.shape:
        raise RuntimeError(
            f"teacher intervention at {name}: the FP model's tensor has shape {tuple(replacement.shape)}, "
            f"the student's {tuple(original.shape)}; student and TI teacher must share the architecture"
        )
    return replacement


@contextlib.contextmanager
def intervene(
    student: nn.Module,
    mode: StepMode,
    teacher_features: dict[str, torch.Tensor],
    *,
    blocks: list[str],
    layout: list[AttentionLayout] | None,
) -> Iterator[None]:
    """Apply one intervention ``mode`` to ``student``'s forwards inside the block (hooks removed on exit).

    Args:
        student: The quantized student (same architecture as the TI teacher).
        mode: ``none``, ``output``, ``context``, ``map`` or ``block_input``.
        teacher_features: Captured from the TI teacher on the same batch (keys
            ``h{i}``, ``probs{i}``, ``context{i}``, ``ao{i}``), see ``capture_teacher``.
        blocks: Block names (``block_names``).
        layout: The attention layout (needed by output, context and map).

    Raises:
        ValueError: ``mode`` needs an attention layout and ``layout`` is ``None``, or is unknown.
    """
    if mode not in STEP_MODES:
        raise ValueError(f"unknown intervention mode {mode!r}; valid: {', '.join(STEP_MODES)}")
    if mode in ("output", "context", "map") and layout is None:
        raise ValueError(
            f"intervention mode {mode!r} replaces attention signals, but {type(student).__name__} has no "
            f"known attention layout (registered: {', '.join(ATTENTION_LAYOUTS.names())}); "
            "use mode block_input, which needs only model.blocks"
        )
    modules = dict(student.named_modules())
    handles: list[Any] = []

    def detach_input(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].detach(), *args[1:])

    def replace_input(name: str, key: str) -> Callable[..., tuple[Any, ...]]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (_checked(name, teacher_features[key], args[0]), *args[1:])

        return hook

    def replace_output(name: str, key: str) -> Callable[..., torch.Tensor]:
        def hook(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> torch.Tensor:
            return _checked(name, teacher_features[key], first_tensor(output))

        return hook

    try:
        if mode == "block_input":
            for i, b in enumerate(blocks):
                handles.append(modules[b].register_forward_pre_hook(replace_input(b, f"h{i}")))
        elif mode != "none":
            assert layout is not None  # checked above; for type checkers
            detached = ("q", "k") if mode == "map" else ("q", "k", "v")
            for i, lay in enumerate(layout):
                for part in detached:
                    handles.append(modules[getattr(lay, part)].register_forward_pre_hook(detach_input))
                if mode == "output":
                    handles.append(modules[lay.o].register_forward_hook(replace_output(lay.o, f"ao{i}")))
                elif mode == "context":
                    handles.append(
                        modules[lay.o].register_forward_pre_hook(replace_input(lay.o, f"context{i}"))
                    )
                else:
                    handles.append(
                        modules[lay.probs].register_forward_hook(replace_output(lay.probs, f"probs{i}"))
                    )
        yield
    finally:
        for h in handles:
            h.remove()


# --- objective -------------------------------------------------------------------------------------


def _masked(scores: torch.Tensor) -> torch.Tensor:
    return torch.where(scores <= MASKED_SCORE, torch.zeros_like(scores), scores)


class InterventionObjective:
    """``loss_fn(model, x, y)`` for ``compress.train.fit``: one TI-teacher forward, then the student's.

    Set ``mode`` (a ``StepMode``) before a step to choose the intervention;
    ``train_with_intervention`` does that from the schedule. The loss is the
    same in every mode (``InterventionLossesConfig``).

    Args:
        teacher: The full-precision TI teacher, same architecture as the student (put in eval mode).
        losses: Term weights.
        extra: Optional further loss (e.g. KD from the pipeline's original teacher);
            its terms are reported with the prefix ``original_``.
        mode: Initial mode.

    Example:
        >>> obj = InterventionObjective(fp_model, InterventionLossesConfig())  # doctest: +SKIP
        >>> obj.mode = "map"; loss, terms = obj(student, x, y)  # doctest: +SKIP
    """

    def __init__(
        self,
        teacher: nn.Module,
        losses: InterventionLossesConfig,
        *,
        extra: LossFn | None = None,
        mode: StepMode = "none",
    ) -> None:
        expose(teacher)  # BERT family, timm ViT: attention signals as modules (no-op otherwise)
        self.teacher = teacher.eval()
        self.losses = losses
        self.extra = extra
        self.mode: StepMode = mode
        self.blocks = block_names(teacher)
        self.layout = find_attention_layout(teacher)
        self._teacher_taps = _teacher_taps(self.blocks, self.layout)
        self._student_taps = _student_taps(self.blocks, self.layout)

    def to(self, device: torch.device | str) -> InterventionObjective:
        """Move the TI teacher (and the extra loss, when it can move) to ``device``; ``fit`` calls this."""
        self.teacher.to(device)
        if hasattr(self.extra, "to"):
            self.extra.to(device)  # type: ignore[union-attr]
        return self

    @torch.no_grad()
    def capture_teacher(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, features)`` of the TI teacher on ``x`` (eval mode, no grad)."""
        self.teacher.eval()
        with capture_features(self.teacher, self._teacher_taps, detach=True) as feats:
            logits = self.teacher(x)
        return logits, dict(feats)

    def student_forward(
        self,
        model: nn.Module,
        x: torch.Tensor,
        teacher_features: dict[str, torch.Tensor],
        mode: StepMode | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, features)`` of the student on ``x`` under ``mode`` (default ``self.mode``)."""
        with (
            capture_features(model, self._student_taps) as feats,
            intervene(model, mode or self.mode, teacher_features, blocks=self.blocks, layout=self.layout),
        ):
            logits = model(x)
        return logits, dict(feats)

    def loss_terms(
        self,
        logits: torch.Tensor,
        feats: dict[str, torch.Tensor],
        t_logits: torch.Tensor,
        t_feats: dict[str, torch.Tensor],
        y: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The weighted loss's terms (unweighted), only those with a weight > 0."""
        w = self.losses
        terms: dict[str, torch.Tensor] = {}
        if w.logits:
            terms["logits"] = soft_cross_entropy(logits, t_logits)
        if w.hidden:
            terms["hidden"] = sum(
                (F.mse_loss(feats[f"h{i}"], t_feats[f"h{i}"]) for i in range(len(self.blocks) + 1)),
                logits.new_zeros(()),
            )
        n_att = len(self.layout or [])
        if w.scores and n_att:
            terms["scores"] = sum(
                (
                    F.mse_loss(_masked(feats[f"scores{i}"]), _masked(t_feats[f"scores{i}"]))
                    for i in range(n_att)
                ),
                logits.new_zeros(()),
            )
        if w.attention_output and n_att:
            terms["attention_output"] = sum(
                (
                    F.mse_loss(feats[f"after_attention{i}"], t_feats[f"after_attention{i}"])
                    for i in range(n_att)
                ),
                logits.new_zeros(()),
            )
        if w.ce:
            terms["ce"] = F.cross_entropy(logits, y)
        return terms

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        t_logits, t_feats = self.capture_teacher(x)
        logits, feats = self.student_forward(model, x, t_feats)
        terms = self.loss_terms(logits, feats, t_logits, t_feats, y)
        weights = self.losses.model_dump()
        total = sum((weights[k] * v for k, v in terms.items()), logits.new_zeros(()))
        report = {k: float(v.detach()) for k, v in terms.items()}
        if self.extra is not None:
            extra_loss, extra_terms = self.extra(model, x, y)
            total = total + extra_loss
            report.update({f"original_{k}": v for k, v in extra_terms.items()})
        return total, report


@torch.no_grad()
def block_output_mse(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> list[float]:
    """Per-layer MSE between the student's and the FP model's hidden states on ``x`` (no intervention).

    Index 0 is the embedding output (block-0 input), index ``l`` the output of
    block ``l - 1``: the paper's Fig. 2(b)/4(b) measurement.
    """
    blocks = block_names(teacher)
    taps = _teacher_taps(blocks, None)
    was_s, was_t = student.training, teacher.training
    student.eval()
    teacher.eval()
    try:
        with capture_features(teacher, taps) as tf:
            teacher(x)
        with capture_features(student, taps) as sf:
            student(x)
    finally:
        student.train(was_s)
        teacher.train(was_t)
    return [F.mse_loss(sf[f"h{i}"], tf[f"h{i}"]).item() for i in range(len(blocks) + 1)]


# --- the two-step run ------------------------------------------------------------------------------


@dataclass
class InterventionResult:
    """What ``train_with_intervention`` returns.

    Attributes:
        schedule: The phases actually used (``ti_schedule`` in metrics).
        step1_steps: ``s``.
        total_steps: ``N``.
        steps: Optimizer steps taken (``s`` + step 2's).
        history: Per-epoch rows of both steps with ``phase`` (``intervention``/``kd_qat``),
            ``mode`` (in force at the row's last step) and the global ``step``.
        step_evals: Rows of the every-k-steps evaluation, with global ``step`` and ``mode``.
        resumed_step1: Step 1 was loaded from its finished-phase checkpoint.
    """

    schedule: list[SchedulePhase]
    step1_steps: int
    total_steps: int
    steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_evals: list[dict[str, Any]] = field(default_factory=list)
    resumed_step1: bool = False

    def metrics(self) -> dict[str, Any]:
        """JSON-able summary (``ti_schedule`` and step counts)."""
        return {
            "ti_schedule": [p.to_dict() for p in self.schedule],
            "step1_steps": self.step1_steps,
            "step2_steps": self.total_steps - self.step1_steps,
            "total_steps": self.total_steps,
        }


def _fingerprint(model: nn.Module) -> str:
    """SHA-256 of the state dict's names and values (keys the phase checkpoints to the starting weights)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_with_intervention(
    student: nn.Module,
    teacher: nn.Module,
    data: TaskData,
    train: TrainConfig,
    ti: TeacherInterventionConfig,
    *,
    batch_size: int,
    seed: int,
    checkpoint_dir: Path | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    reporter: Reporter = SILENT,
    description: str = "qat",
    extra_loss: LossFn | None = None,
    total_steps: int | None = None,
) -> InterventionResult:
    """Two-step QAT with Teacher Intervention; trains ``student`` in place.

    ``N`` = ``train.epochs`` × optimizer steps per epoch (or ``total_steps``).
    Step 1 runs ``s = ti.step1_steps(N)`` steps with the scheduled
    intervention; step 2 runs ``N - s`` steps without, with a fresh optimizer
    and learning-rate schedule (warm-up and decay span each step separately,
    as the code's ``t_total``), and a different shuffle (``seed + 1``). With
    ``mode: none`` all ``N`` steps are one plain run with ``seed``: the KD-QAT
    baseline with the same loss. The mode switches are reported through
    ``reporter``.

    Resume: each step checkpoints every epoch (``fit``); a finished step 1 is
    saved whole (``ti_step1.<key>.pt``), so a run killed in step 2 does not
    redo step 1. The key covers the configs, seed, batch size and the
    student's weights at the start, so a stale file is never used.

    Args:
        student: Quantized (prepared and calibrated) student; trained in place.
        teacher: The FP TI teacher: same architecture, not trained.
        data: Data with splits.
        train: Optimizer, schedule, epochs (``N``).
        ti: Mode, ``s``, loss weights, evaluation interval.
        batch_size: Fallback batch size (``train.batch_size`` wins).
        seed: Base seed.
        checkpoint_dir: Where the per-epoch and phase checkpoints go; ``None``: no resume.
        eval_fn: Validation metrics of a model (per epoch and every ``ti.eval_every_steps``).
        reporter: Progress and mode-switch lines.
        description: Progress label.
        extra_loss: Added to the TI loss in both steps (e.g. logit KD from another teacher).
        total_steps: Override ``N`` (the benchmark uses it; ``None``: from ``train.epochs``).

    Returns:
        An ``InterventionResult``.

    Raises:
        ValueError: ``s > N``, or the model lacks ``blocks``/an attention layout the mode needs.
    """
    spe = steps_per_epoch(data, train, batch_size=batch_size)
    n = train.epochs * spe if total_steps is None else total_steps
    s = ti.step1_steps(n)
    schedule = intervention_schedule(ti.mode, s, n)
    expose(student)  # the TI teacher is exposed by the objective; both must match
    objective = InterventionObjective(teacher, ti.losses, extra=extra_loss)
    if ti.mode not in ("none", "block_input") and objective.layout is None:
        raise ValueError(
            f"teacher_intervention.mode {ti.mode!r} needs attention signals, but "
            f"{type(teacher).__name__} has no known attention layout "
            f"(registered: {', '.join(ATTENTION_LAYOUTS.names())}); "
            "use mode: block_input (any model with model.blocks)"
        )
    result = InterventionResult(schedule=schedule, step1_steps=s, total_steps=n)
    key_fields = {"train": train.model_dump(), "ti": ti.model_dump(), "bs": batch_size, "seed": seed, "n": n}
    key = sha256_json({**key_fields, "weights": _fingerprint(student)})[:16]
    current: dict[str, Any] = {"mode": None}

    def set_mode(step: int) -> None:
        mode = mode_at(schedule, step)
        objective.mode = mode
        if mode != current["mode"]:
            current["mode"] = mode
            phase = next(p for p in schedule if p.from_step <= step < p.to_step)
            label = f"{mode} ({PAPER_NAMES[mode]})" if mode in PAPER_NAMES else mode
            if mode == "none":
                label = "off (plain KD-QAT, fresh optimizer)" if step > 0 else "off (KD-QAT baseline)"
            reporter.line(
                f"  {description}: teacher intervention {label} for optimizer steps "
                f"[{phase.from_step}, {phase.to_step}) of {n}"
            )

    def fit_phase(phase: str, steps: int, offset: int, phase_seed: int) -> None:
        ckpt = checkpoint_dir / f"ti_{phase}.{key}.ckpt" if checkpoint_dir is not None else None
        res = fit(
            student,
            objective,
            data,
            train,
            batch_size=batch_size,
            seed=phase_seed,
            checkpoint=ckpt,
            eval_fn=eval_fn,
            reporter=reporter,
            description=f"{description} {phase}",
            epochs=math.ceil(steps / spe),
            max_steps=steps,
            before_step=set_mode,
            eval_every_steps=ti.eval_every_steps,
            step_offset=offset,
        )
        result.steps += res.steps
        for rows, into in ((res.history, result.history), (res.step_evals, result.step_evals)):
            for row in rows:
                g = int(row["step"])
                into.append({**row, "phase": phase, "step": g, "mode": mode_at(schedule, g - 1)})

    done = checkpoint_dir / f"ti_step1.{key}.pt" if checkpoint_dir is not None else None
    if s > 0:
        if done is not None and done.is_file():
            ck = torch.load(done, map_location="cpu", weights_only=True)
            student.load_state_dict(ck["model"])
            result.steps, result.history, result.step_evals = (
                int(ck["steps"]),
                ck["history"],
                ck["step_evals"],
            )
            result.resumed_step1 = True
            reporter.line(f"  {description}: step 1 ({s} steps with intervention) loaded from {done.name}")
        else:
            fit_phase("intervention", s, 0, seed)
            if done is not None:
                state = {"model": student.state_dict(), "steps": result.steps}
                atomic_torch_save({**state, "history": result.history, "step_evals": result.step_evals}, done)
    if n - s > 0:
        objective.mode = "none"
        fit_phase("kd_qat", n - s, s, seed + 1 if s > 0 else seed)
    if done is not None and os.environ.get("COMPRESS_KEEP_EPOCH_CKPT") != "1":
        done.unlink(missing_ok=True)
    return result
