"""The distillation objective: every ``losses:`` term as one ``loss_fn(model, x, y)`` module.

``DistillObjective`` is what a training stage hands to ``compress.train.fit``. It is an
``nn.Module`` so that the loop can see what it must train and move:

* the teacher lives inside it as a frozen deep copy (eval mode, ``requires_grad`` off),
  so ``objective.to(device)`` moves it and the caller's teacher is never touched;
* the learned projections of FitNets/TinyBERT (``projections``) are created in
  ``__init__``, with shapes read from one no-grad forward of both models on
  ``example_inputs``, so the optimizer and the per-epoch checkpoint see them from the
  start (``[p for p in objective.parameters() if p.requires_grad]``).

Features are read by forward hooks at the taps of a ``FeatureLayout``
(``compress.distill.layouts``): hidden states from the layout or from YAML globs,
attention Q/K/V from the layout, scores and relations computed here from Q/K/V. Every
problem that comes from the YAML (a glob matching nothing, a layer map out of range,
unequal head counts for MiniLM, an attention term on a model without a layout, widths a
term cannot reconcile) is a ``ConfigError`` whose message starts with the YAML path
given as ``yaml_path`` and says what to change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from compress.distill.config import LayerMap, LossesConfig
from compress.distill.features import Tap, capture_features
from compress.distill.layouts import (
    FEATURE_LAYOUTS,
    FeatureLayout,
    find_layout,
    glob_layout,
    suggest_modules,
    unwrap,
)
from compress.distill.losses import (
    attention_kl,
    attention_score_mse,
    attention_scores,
    cosine_loss,
    dkd_loss,
    dkd_warmup_factor,
    hidden_mse,
    kd_loss,
    minilmv2_relation_kl,
    value_relation_kl,
)
from compress.errors import ConfigError

ATTENTION_TERMS = ("attention_scores", "minilm", "minilmv2")


class ConvRegressor(nn.Sequential):
    """FitNets regressor as mdistiller's ``ConvReg`` at equal spatial size: 1x1 conv + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels), nn.ReLU())


@dataclass
class _Plan:
    """What the objective reads from each model and how it pairs them (built once in ``__init__``)."""

    s_hidden: FeatureLayout | None = None
    t_hidden: FeatureLayout | None = None
    s_att: FeatureLayout | None = None
    t_att: FeatureLayout | None = None
    hidden_pairs: list[tuple[int, int]] = field(default_factory=list)
    hidden_proj: list[str | None] = field(default_factory=list)
    score_pairs: list[tuple[int, int]] = field(default_factory=list)
    minilm_pair: tuple[int, int] | None = None
    minilmv2_pair: tuple[int, int] | None = None
    relation_heads: int | None = None
    cosine_pair: tuple[int, int] | None = None

    def hidden_indices(self, side: int) -> list[int]:
        out = {p[side] for p in self.hidden_pairs}
        if self.cosine_pair is not None:
            out.add(self.cosine_pair[side])
        return sorted(out)

    def attention_layers(self, side: int) -> list[int]:
        out = {p[side] for p in self.score_pairs}
        for pair in (self.minilm_pair, self.minilmv2_pair):
            if pair is not None:
                out.add(pair[side])
        return sorted(out)


def _map_layers(spec: LayerMap, s_indices: list[int], t_indices: list[int]) -> list[tuple[int, int]]:
    """Pairs for ``uniform``/``last``; explicit pairs are returned as given (checked by the caller)."""
    if isinstance(spec, list):
        return [(int(a), int(b)) for a, b in spec]
    m, n = max(s_indices), max(t_indices)
    if spec == "last":
        return [(m, n)]
    # TinyBERT: student m <-> teacher m·k with k = N/M; rounded half up when M does not divide N.
    start = 0 if 0 in s_indices and 0 in t_indices else 1
    return [(i, (2 * i * n + m) // (2 * m)) for i in range(start, m + 1)]


def _range_text(indices: list[int], *, hidden: bool) -> str:
    if not indices:
        return "none"
    text = f"{min(indices)}..{max(indices)}"
    if hidden and 0 in indices:
        text += " (0 = embedding output)"
    return text


class DistillObjective(nn.Module):
    """``loss_fn(model, x, y) -> (loss, {term: value})`` for every term of a ``LossesConfig``.

    Args:
        teacher: The teacher; a frozen deep copy is kept (``self.teacher``), the argument
            itself is not modified.
        losses: Terms and weights.
        student: The student (only read, for layouts and projection shapes); required when
            a feature term (hidden, attention_scores, minilm, minilmv2, cosine) is on.
        example_inputs: A real input batch for the shape probe; required with ``student``.
        steps_per_epoch: Optimizer steps per epoch (DKD warm-up in epochs).
        yaml_path: Where ``losses`` sits in the YAML, for messages (``stages[1].distill.losses``).

    Raises:
        ConfigError: The losses do not fit the models (the message names the YAML key and the fix).
        ValueError: A feature term is on but ``student`` or ``example_inputs`` is missing.

    Example:
        >>> obj = DistillObjective(teacher, LossesConfig(), student=s, example_inputs=x)  # doctest: +SKIP
        >>> loss, terms = obj(student, x, y)  # doctest: +SKIP
    """

    def __init__(
        self,
        teacher: nn.Module,
        losses: LossesConfig,
        *,
        student: nn.Module | None = None,
        example_inputs: torch.Tensor | None = None,
        steps_per_epoch: int | None = None,
        yaml_path: str = "losses",
    ) -> None:
        super().__init__()
        self.losses = losses
        self.yaml_path = yaml_path
        self.steps_per_epoch = steps_per_epoch
        self.teacher = copy.deepcopy(unwrap(teacher)).eval().requires_grad_(False)
        self.projections = nn.ModuleDict()
        self._step = 0
        self._step_given = False
        dkd = losses.dkd
        if dkd is not None and dkd.warmup > 0 and dkd.warmup_unit == "epochs" and not steps_per_epoch:
            raise ConfigError(
                f"{yaml_path}.dkd.warmup_unit: 'epochs' needs the steps per epoch, which this stage does not "
                "give its loss; write warmup_unit: steps (warmup in optimizer steps), or warmup: 0"
            )
        self._plan = _Plan()
        if losses.feature_terms:
            if student is None or example_inputs is None:
                raise ConfigError(
                    f"{yaml_path}.{losses.feature_terms[0]}: this stage gives its loss no student to read "
                    "features from; here use only kd, ce and dkd (feature terms work in distill stages)"
                )
            self._plan = self._build_plan(unwrap(student), example_inputs)

    # --- step (DKD warm-up) ------------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """Tell the objective the optimizer step about to be taken (``fit``'s ``before_step`` hook).

        Until this is called the objective counts its own training-mode calls instead.
        """
        self._step = int(step)
        self._step_given = True

    @property
    def step(self) -> int:
        """The optimizer step the next loss belongs to (0-based)."""
        return self._step

    def dkd_factor(self) -> float:
        """The DKD warm-up factor now: ``min(progress / warmup, 1)``, progress counted from 1."""
        dkd = self.losses.dkd
        if dkd is None:
            return 0.0
        if dkd.warmup_unit == "steps":
            return dkd_warmup_factor(self._step + 1, dkd.warmup)
        per = max(1, self.steps_per_epoch or 1)
        return dkd_warmup_factor(self._step // per + 1, dkd.warmup)

    # --- modes and devices -------------------------------------------------------------------------

    def train(self, mode: bool = True) -> DistillObjective:
        """Set the projections' mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _follow_device(self, x: torch.Tensor) -> None:
        # The loop moves the objective with .to(device); this only covers callers that do not
        # (e.g. an objective nested in another loss). Module.to keeps the Parameter objects.
        p = next(self.teacher.parameters(), None)
        if p is not None and p.device != x.device:
            self.to(x.device)

    # --- plan ----------------------------------------------------------------------------------------

    def _err(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.yaml_path}.{key}: {message}")

    def _layout(self, model: nn.Module, who: str, key: str) -> FeatureLayout:
        layout = find_layout(model)
        if layout is None:
            known = ", ".join(FEATURE_LAYOUTS.names())
            hint = (
                f"set {self.yaml_path}.hidden.{who}_layers to a glob of its layer modules "
                f"(some module names: {suggest_modules(model)})"
                if key == "hidden"
                else "drop this term, or register a feature layout for it (docs/distillation.md)"
            )
            raise self._err(
                key, f"the {who} ({type(model).__name__}) matches no feature layout (known: {known}); {hint}"
            )
        return layout

    def _attention_layout(self, model: nn.Module, who: str, key: str) -> FeatureLayout:
        layout = self._layout(model, who, key)
        if not layout.has_attention:
            raise self._err(
                key,
                f"the {who} ({type(model).__name__}, layout '{layout.name}') has no attention layers; "
                "attention terms need a Transformer layout (tiny-vit, hf-bert, timm-vit); drop this term",
            )
        return layout

    def _hidden_layout(self, model: nn.Module, who: str, pattern: str | None) -> FeatureLayout:
        if pattern is None:
            return self._layout(model, who, "hidden")
        try:
            return glob_layout(model, pattern, base=find_layout(model))
        except LookupError as e:
            raise self._err(
                f"hidden.{who}_layers", f"the {who} ({type(model).__name__}): {e}; write a glob that matches"
            ) from None

    def _check_pairs(
        self, key: str, pairs: list[tuple[int, int]], s_idx: list[int], t_idx: list[int], *, hidden: bool
    ) -> None:
        bad = [list(p) for p in pairs if p[0] not in s_idx or p[1] not in t_idx]
        if bad:
            what = "hidden states" if hidden else "attention layers"
            raise self._err(
                key,
                f"pair(s) {bad} out of range: the student has {what} {_range_text(s_idx, hidden=hidden)}, "
                f"the teacher {_range_text(t_idx, hidden=hidden)}; use indices in those ranges, "
                "or uniform / last",
            )

    def _build_plan(self, student: nn.Module, example_inputs: torch.Tensor) -> _Plan:
        cfg, plan = self.losses, _Plan()
        if cfg.hidden is not None or cfg.cosine is not None:
            pattern_s = cfg.hidden.student_layers if cfg.hidden is not None else None
            pattern_t = cfg.hidden.teacher_layers if cfg.hidden is not None else None
            plan.s_hidden = self._hidden_layout(student, "student", pattern_s)
            plan.t_hidden = self._hidden_layout(self.teacher, "teacher", pattern_t)
            s_idx, t_idx = plan.s_hidden.hidden_indices(), plan.t_hidden.hidden_indices()
            if cfg.hidden is not None:
                plan.hidden_pairs = _map_layers(cfg.hidden.layer_map, s_idx, t_idx)
                self._check_pairs("hidden.layer_map", plan.hidden_pairs, s_idx, t_idx, hidden=True)
            if cfg.cosine is not None:
                plan.cosine_pair = (max(s_idx), max(t_idx))
        if any(getattr(cfg, k) is not None for k in ATTENTION_TERMS):
            key = next(k for k in ATTENTION_TERMS if getattr(cfg, k) is not None)
            plan.s_att = self._attention_layout(student, "student", key)
            plan.t_att = self._attention_layout(self.teacher, "teacher", key)
            s_l = list(range(1, plan.s_att.num_layers + 1))
            t_l = list(range(1, plan.t_att.num_layers + 1))
            if cfg.attention_scores is not None:
                plan.score_pairs = _map_layers(cfg.attention_scores.layer_map, s_l, t_l)
                self._check_pairs("attention_scores.layer_map", plan.score_pairs, s_l, t_l, hidden=False)
            if cfg.minilm is not None:
                plan.minilm_pair = (s_l[-1], t_l[-1])
            if cfg.minilmv2 is not None:
                v2 = cfg.minilmv2
                plan.minilmv2_pair = (v2.student_layer or s_l[-1], v2.teacher_layer or t_l[-1])
                for side, key2, layers in (
                    ("student", "student_layer", s_l),
                    ("teacher", "teacher_layer", t_l),
                ):
                    chosen = plan.minilmv2_pair[0 if side == "student" else 1]
                    if chosen not in layers:
                        raise self._err(
                            f"minilmv2.{key2}",
                            f"layer {chosen} out of range: the {side} has attention layers 1..{layers[-1]}",
                        )
        self._plan = plan
        self._probe(student, example_inputs)
        return plan

    def _probe(self, student: nn.Module, x: torch.Tensor) -> None:
        """One no-grad forward of both models: check shapes and create the projections."""
        plan = self._plan
        was = student.training
        student.eval()
        try:
            with torch.no_grad():
                _, _, s_feats, t_feats = self._run(student, x)
        finally:
            student.train(was)
        cfg = self.losses
        for s_i, t_i in plan.hidden_pairs:
            fs, ft = s_feats[f"h{s_i}"], t_feats[f"h{t_i}"]
            plan.hidden_proj.append(self._make_projection(s_i, t_i, fs, ft))
        if plan.cosine_pair is not None:
            fs, ft = s_feats[f"h{plan.cosine_pair[0]}"], t_feats[f"h{plan.cosine_pair[1]}"]
            if fs.shape != ft.shape:
                raise self._err(
                    "cosine",
                    f"the last hidden states differ in shape (student {tuple(fs.shape)}, teacher "
                    f"{tuple(ft.shape)}); DistilBERT's cosine loss needs equal widths; drop it or use hidden",
                )
        mask = self._key_mask(x)
        for s_l, t_l in plan.score_pairs:
            (qs, ks, _), (qt, kt, _) = s_feats[f"a{s_l}"], t_feats[f"a{t_l}"]
            if qs.shape[:3] != qt.shape[:3]:
                raise self._err(
                    "attention_scores",
                    f"student layer {s_l} has {qs.shape[1]} attention heads over {qs.shape[2]} tokens, "
                    f"teacher layer {t_l} has {qt.shape[1]} over {qt.shape[2]}; TinyBERT attention transfer "
                    "needs equal "
                    "head counts; use minilmv2 (relation heads), which allows different counts",
                )
            attention_score_mse(attention_scores(qs, ks, mask), attention_scores(qt, kt, mask), mask)
        if plan.minilm_pair is not None:
            qs, qt = s_feats[f"a{plan.minilm_pair[0]}"][0], t_feats[f"a{plan.minilm_pair[1]}"][0]
            if qs.shape[1] != qt.shape[1] or qs.shape[2] != qt.shape[2]:
                raise self._err(
                    "minilm",
                    f"the student's last layer has {qs.shape[1]} attention heads and the teacher's "
                    f"{qt.shape[1]} (tokens {qs.shape[2]} vs {qt.shape[2]}); MiniLM needs equal head counts; "
                    "use losses.minilmv2 (relation heads) instead",
                )
        if plan.minilmv2_pair is not None:
            assert cfg.minilmv2 is not None
            (qs, _, _), (qt, _, _) = (
                s_feats[f"a{plan.minilmv2_pair[0]}"],
                t_feats[f"a{plan.minilmv2_pair[1]}"],
            )
            heads = cfg.minilmv2.relation_heads or qt.shape[1]
            ws, wt = qs.shape[1] * qs.shape[3], qt.shape[1] * qt.shape[3]
            if ws % heads or wt % heads:
                common = [d for d in range(1, min(ws, wt) + 1) if ws % d == 0 and wt % d == 0]
                raise self._err(
                    "minilmv2.relation_heads",
                    f"{heads} relation heads must divide both attention widths (student {ws}, teacher {wt}); "
                    f"choose one of {common[-6:]}",
                )
            if qs.shape[2] != qt.shape[2]:
                raise self._err(
                    "minilmv2",
                    f"student and teacher see {qs.shape[2]} and {qt.shape[2]} tokens; they must match",
                )
            plan.relation_heads = heads

    def _make_projection(self, s_i: int, t_i: int, fs: torch.Tensor, ft: torch.Tensor) -> str | None:
        mode = self.losses.hidden.projection if self.losses.hidden is not None else "auto"
        where = f"student hidden state {s_i} {tuple(fs.shape)} vs teacher {t_i} {tuple(ft.shape)}"
        if fs.ndim != ft.ndim or fs.ndim not in (2, 3, 4) or fs.shape[0] != ft.shape[0]:
            raise self._err(
                "hidden", f"cannot pair {where}: features must both be (B, D), (B, L, D) or (B, C, H, W)"
            )
        if fs.ndim == 4:
            if fs.shape[2:] != ft.shape[2:]:
                raise self._err(
                    "hidden.layer_map",
                    f"{where}: spatial sizes differ; map layers of equal resolution",
                )
            cs, ct = fs.shape[1], ft.shape[1]
            if cs == ct and mode != "always":
                return None
            if mode == "none":
                raise self._err("hidden.projection", f"{where}: channels differ; set projection: auto")
            key = f"conv{len(self.projections)}"
            self.projections[key] = ConvRegressor(cs, ct)
            return key
        if fs.shape[1:-1] != ft.shape[1:-1]:
            raise self._err("hidden.layer_map", f"{where}: token counts differ; they must match")
        ds, dt = fs.shape[-1], ft.shape[-1]
        if ds == dt and mode != "always":
            return None
        if mode == "none":
            raise self._err("hidden.projection", f"{where}: widths differ; set projection: auto")
        # One Linear per width pair, shared by all layers (TinyBERT's fit_dense).
        key = f"linear_{ds}_{dt}"
        if key not in self.projections:
            self.projections[key] = nn.Linear(ds, dt)
        return key

    # --- features ----------------------------------------------------------------------------------

    def _taps(self, side: int, att_layout: FeatureLayout | None) -> dict[str, Tap]:
        plan = self._plan
        hidden = plan.s_hidden if side == 0 else plan.t_hidden
        taps: dict[str, Tap] = {}
        for i in plan.hidden_indices(side):
            assert hidden is not None
            taps[f"h{i}"] = hidden.hidden_tap(i)
        for layer in plan.attention_layers(side):
            assert att_layout is not None
            att = att_layout.layers[layer - 1].attention
            assert att is not None
            for name, tap in att.taps.items():
                taps[f"a{layer}.{name}"] = tap
        return taps

    def _split(
        self, feats: dict[str, torch.Tensor], side: int, att_layout: FeatureLayout | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in feats.items() if k.startswith("h")}
        for layer in self._plan.attention_layers(side):
            assert att_layout is not None
            att = att_layout.layers[layer - 1].attention
            assert att is not None
            captured = {name: feats[f"a{layer}.{name}"] for name in att.taps}
            out[f"a{layer}"] = att.split(captured, att.heads)
        return out

    def _key_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        plan = self._plan
        for layout, model in ((plan.t_att, self.teacher), (plan.t_hidden, self.teacher)):
            if layout is not None and layout.key_mask is not None:
                return layout.key_mask(model, x)
        return None

    def _run(
        self, model: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any], dict[str, Any]]:
        """``(logits, teacher logits, student features, teacher features)`` of one forward of each model.

        Hooks are set only where the plan needs features; the teacher runs only when a term
        reads it. The student's attention layout is looked up again on every call, so head
        counts changed by pruning between calls are followed.
        """
        plan, inner = self._plan, unwrap(model)
        if not self.needs_teacher:
            return model(x), None, {}, {}
        self._follow_device(x)
        self.teacher.eval()
        s_att = find_layout(inner) if plan.s_att is not None else None
        with torch.no_grad(), capture_features(self.teacher, self._taps(1, plan.t_att), detach=True) as tf:
            t_logits = self.teacher(x)
        with capture_features(inner, self._taps(0, s_att)) as sf:
            logits = model(x)
        return logits, t_logits, self._split(dict(sf), 0, s_att), self._split(dict(tf), 1, plan.t_att)

    # --- the loss ----------------------------------------------------------------------------------

    @property
    def needs_teacher(self) -> bool:
        """Whether any enabled term reads the teacher."""
        c = self.losses
        return c.kd is not None or c.dkd is not None or bool(c.feature_terms)

    def forward(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted loss of ``model`` on ``(x, y)`` and each unweighted term's value."""
        cfg, plan = self.losses, self._plan
        logits, t_logits, s_feats, t_feats = self._run(model, x)
        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        if cfg.kd is not None:
            assert t_logits is not None
            terms["kd"], weights["kd"] = kd_loss(logits, t_logits, cfg.kd.temperature), cfg.kd.weight
        if cfg.ce is not None:
            terms["ce"], weights["ce"] = F.cross_entropy(logits.float(), y), cfg.ce.weight
        if cfg.dkd is not None:
            assert t_logits is not None
            d = cfg.dkd
            terms["dkd"] = dkd_loss(
                logits, t_logits, y, alpha=d.alpha, beta=d.beta, temperature=d.temperature
            )
            weights["dkd"] = d.weight * self.dkd_factor()
        if cfg.hidden is not None:
            parts = []
            for (s_i, t_i), proj in zip(plan.hidden_pairs, plan.hidden_proj, strict=True):
                fs = s_feats[f"h{s_i}"]
                if proj is not None:
                    fs = self.projections[proj](fs.to(self._proj_dtype(proj)))
                parts.append(hidden_mse(fs, t_feats[f"h{t_i}"]))
            terms["hidden"], weights["hidden"] = torch.stack(parts).sum(), cfg.hidden.weight
        mask = self._key_mask(x) if plan.s_att is not None or cfg.cosine is not None else None
        if cfg.attention_scores is not None:
            parts = []
            for s_l, t_l in plan.score_pairs:
                (qs, ks, _), (qt, kt, _) = s_feats[f"a{s_l}"], t_feats[f"a{t_l}"]
                s_sc, t_sc = attention_scores(qs, ks, mask), attention_scores(qt, kt, mask)
                parts.append(attention_score_mse(s_sc, t_sc, mask))
            terms["attention_scores"] = torch.stack(parts).sum()
            weights["attention_scores"] = cfg.attention_scores.weight
        if cfg.minilm is not None and plan.minilm_pair is not None:
            (qs, ks, vs), (qt, kt, vt) = (
                s_feats[f"a{plan.minilm_pair[0]}"],
                t_feats[f"a{plan.minilm_pair[1]}"],
            )
            att = attention_kl(attention_scores(qs, ks, mask), attention_scores(qt, kt, mask), mask)
            val = value_relation_kl(vs, vt, mask)
            terms["minilm"] = cfg.minilm.attention_weight * att + cfg.minilm.value_weight * val
            weights["minilm"] = cfg.minilm.weight
        if cfg.minilmv2 is not None and plan.minilmv2_pair is not None:
            v2, heads = cfg.minilmv2, plan.relation_heads
            assert heads is not None
            s_qkv, t_qkv = s_feats[f"a{plan.minilmv2_pair[0]}"], t_feats[f"a{plan.minilmv2_pair[1]}"]
            rel = logits.new_zeros((), dtype=torch.float32)
            for j, w in enumerate((v2.qq, v2.kk, v2.vv)):
                if w:
                    rel = rel + w * minilmv2_relation_kl(s_qkv[j], t_qkv[j], heads, mask)
            terms["minilmv2"], weights["minilmv2"] = rel, v2.weight
        if cfg.cosine is not None and plan.cosine_pair is not None:
            s_i, t_i = plan.cosine_pair
            terms["cosine"] = cosine_loss(s_feats[f"h{s_i}"], t_feats[f"h{t_i}"], mask)
            weights["cosine"] = cfg.cosine.weight
        total = sum((weights[k] * v for k, v in terms.items()), logits.new_zeros((), dtype=torch.float32))
        if not self._step_given and unwrap(model).training and torch.is_grad_enabled():
            self._step += 1
        # one device sync for all the reported values
        values = torch.stack([v.detach().float() for v in terms.values()]).tolist() if terms else []
        return total, dict(zip(terms, values, strict=True))

    def _proj_dtype(self, key: str) -> torch.dtype:
        p = next(self.projections[key].parameters())
        return p.dtype

    # --- reporting ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """JSON summary for stage metrics: enabled terms, layouts, layer pairs, projection parameters."""
        plan = self._plan
        out: dict[str, Any] = {
            "terms": [n for n in type(self.losses).model_fields if getattr(self.losses, n) is not None],
            "projection_params": sum(p.numel() for p in self.projections.parameters()),
        }
        for side, hidden, att in (
            ("student", plan.s_hidden, plan.s_att),
            ("teacher", plan.t_hidden, plan.t_att),
        ):
            main = att if att is not None else hidden
            if main is not None:
                out[side] = main.describe()
            if hidden is not None and hidden != main:
                out[f"{side}_hidden"] = hidden.describe()
        if plan.hidden_pairs:
            out["hidden_pairs"] = [list(p) for p in plan.hidden_pairs]
        if plan.score_pairs:
            out["attention_score_pairs"] = [list(p) for p in plan.score_pairs]
        if plan.minilm_pair:
            out["minilm_pair"] = list(plan.minilm_pair)
        if plan.minilmv2_pair:
            out["minilmv2_pair"] = list(plan.minilmv2_pair)
            out["relation_heads"] = plan.relation_heads
        return out
