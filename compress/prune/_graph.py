"""torch-pruning glue: what is prunable, exact prices of a plan, a pruner for a plan, and safe application.

torch-pruning's ``DependencyGraph`` finds the coupled channels (q/k/v outputs
with the output projection's inputs; ``fc1`` outputs with ``fc2`` inputs; in a
CNN every convolution writing into a residual sum, with its BatchNorms and the
convolutions reading it). This module sorts its groups into *units*:

* ``heads``: the group of one attention module. Three attention styles are
  recognised (``ATTENTION_STYLES``): the built-in tiny-vit (``q``/``k``/``v``
  and ``num_heads``), Hugging Face BERT family (``query``/``key``/``value`` and
  ``num_attention_heads``, ``attention_head_size``, ``all_head_size``) and timm
  (fused ``qkv`` and ``num_heads``, ``attn_dim``). Whole heads are removed and
  the head width kept; every head-count attribute is updated after pruning.
* ``ffn`` (models with attention): a group with exactly one ``nn.Linear``
  producing it, no LayerNorm or free parameter in it (the residual stream) and
  not read by the classifier (a BERT pooler): an FFN's hidden neurons.
* ``channels`` (models without attention, e.g. ResNets): any group produced by
  convolutions or Linears, residual-coupled groups included (all their convs,
  BatchNorms and readers shrink together).

Every other group (a Transformer's residual stream: embeddings, output
projections, ``fc2`` outputs, norms, positions) is never pruned. The model's
classifier (its last Linear or convolution) keeps its outputs; its inputs may
shrink with a CNN's last channel group.

Each Linear/convolution costs MACs and parameters proportional to the kept
fraction of its input unit times that of its output unit (attention matmuls
scale with the kept heads), so a plan's MACs and parameters are computed
exactly without pruning anything (``Layout.price``). A *plan* maps unit names
to how many heads or channels to remove; ``make_pruner`` turns it into a
torch-pruning ``BasePruner`` with per-layer ratios chosen so that its rounding
removes exactly those counts.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from compress._utils.registry import did_you_mean
from compress.models.stats import count_params, module_macs

ALWAYS_IGNORED = ("patch_embed",)
"""Module names (or name suffixes after a dot) never pruned whatever the config says: a ViT's input
embedding. The classifier (the model's last Linear or convolution) is always ignored too."""

_ENABLE_RATIO = 1e-6
"""A width ratio > 0 for attention scopes: torch-pruning removes heads only in such a scope."""

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)

UnitKind = Literal["heads", "ffn", "channels"]
WIDTH_KINDS = ("ffn", "channels")
"""Unit kinds measured in neurons or channels (the planner's width knob)."""


class InfeasiblePlanError(Exception):
    """A pruning plan would leave a layer below its minimum width."""

    def __init__(self, layer: str, remaining: int, minimum: int) -> None:
        self.layer = layer
        super().__init__(f"'{layer}' would keep {remaining} channels (minimum {minimum})")


@dataclass(frozen=True)
class AttentionStyle:
    """How one attention implementation names its projections and head count.

    Attributes:
        name: Style name.
        projs: Names of the input projections (one fused ``qkv`` or separate q, k, v).
        heads_attr: Integer attribute holding the head count.
        out_proj: Name of the output projection when it is a child of the attention module.
    """

    name: str
    projs: tuple[str, ...]
    heads_attr: str
    out_proj: str | None

    def matches(self, m: nn.Module) -> bool:
        """Whether ``m`` is an attention module of this style."""
        return isinstance(getattr(m, self.heads_attr, None), int) and all(
            isinstance(getattr(m, p, None), nn.Linear) for p in self.projs
        )


ATTENTION_STYLES = (
    AttentionStyle("tiny-vit", ("q", "k", "v"), "num_heads", "o"),
    AttentionStyle("hf-bert", ("query", "key", "value"), "num_attention_heads", None),
    AttentionStyle("timm", ("qkv",), "num_heads", "proj"),
)
"""Recognised attention implementations, tried in order."""


def attention_style(m: nn.Module) -> AttentionStyle | None:
    """The style of attention module ``m``, or None when it is not one."""
    return next((s for s in ATTENTION_STYLES if s.matches(m)), None)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Attention modules of any recognised style (``ATTENTION_STYLES``), by name."""
    return {name: m for name, m in model.named_modules() if attention_style(m) is not None}


def heads_of(a: nn.Module) -> int:
    """Current head count of attention module ``a``."""
    style = attention_style(a)
    assert style is not None
    return int(getattr(a, style.heads_attr))


def projections(a: nn.Module) -> list[nn.Linear]:
    """The input projections of attention module ``a`` (``[qkv]`` or ``[q, k, v]``)."""
    style = attention_style(a)
    assert style is not None
    return [getattr(a, p) for p in style.projs]


def head_width(a: nn.Module) -> int:
    """Width of one head of attention module ``a``."""
    p = projections(a)
    return p[0].out_features // (3 if len(p) == 1 else 1) // heads_of(a)


def set_heads(a: nn.Module, n: int, width: int) -> None:
    """Write head count ``n`` (of width ``width``) into every attribute that encodes it."""
    style = attention_style(a)
    assert style is not None
    setattr(a, style.heads_attr, int(n))
    if isinstance(getattr(a, "all_head_size", None), int):  # Hugging Face
        a.all_head_size = int(n) * width
    if isinstance(getattr(a, "attn_dim", None), int):  # timm: the merged-heads width
        a.attn_dim = int(n) * width


def classifier_of(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(name, module)`` of the classifier: the last Linear or convolution in module order."""
    last = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    return last[-1] if last else None


def _width(m: nn.Module) -> int:
    return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)


@dataclass(frozen=True)
class Unit:
    """A prunable structure of the current model.

    Attributes:
        kind: ``heads`` (count of heads), ``ffn`` (hidden neurons) or ``channels`` (CNN channels).
        name: Attention module name for heads; the group's first producing layer otherwise.
        size: Current heads, neurons or channels.
        min_size: Fewest that must stay (1 head; ``round_to or 1`` neurons or channels).
        cost: MACs per example that one head, neuron or channel costs while every other unit keeps
            its width (informational: plans are priced exactly by ``Layout.price``).
        producers: Names of the layers whose outputs this unit's channels are.
        scores: Importance of each head or neuron, normalised within the unit
            (filled only for global ranking).
    """

    kind: UnitKind
    name: str
    size: int
    min_size: int
    cost: float
    producers: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()

    @property
    def removable(self) -> int:
        """How many may still go."""
        return max(0, self.size - self.min_size)


@dataclass(frozen=True)
class Term:
    """A share of a model's cost proportional to the product of some units' kept fractions.

    A Linear whose inputs are unit A and outputs unit B costs ``amount * kA * kB``; an
    attention's matmuls cost ``amount * k_heads``.
    """

    amount: float
    units: tuple[str, ...]


@dataclass
class Layout:
    """The prunable units of a model, its cost, and the layers excluded from pruning.

    Attributes:
        units: Prunable units, in graph order.
        macs: MACs per example of the model now.
        params: Parameters of the model now.
        terms: Per metric (``macs``, ``params``), the shares that scale with units.
        ignored: Module names excluded by the config or always.
        blocked: Producing layers of groups this form never prunes (a Transformer's residual stream).
    """

    units: list[Unit] = field(default_factory=list)
    macs: int = 0
    params: int = 0
    terms: dict[str, list[Term]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Unit]:
        """Units of one kind; ``width`` means ffn and channels."""
        kinds = WIDTH_KINDS if kind in ("width", "ffn", "channels") else (kind,)
        return [u for u in self.units if u.kind in kinds]

    def price(self, plan: dict[str, int], metric: str = "macs") -> float:
        """``metric`` (``macs`` per example or ``params``) of the model after removing ``plan``."""
        sizes = {u.name: u.size for u in self.units}
        kept = {n: (sizes[n] - plan.get(n, 0)) / sizes[n] for n in sizes}
        total = float(self.macs if metric == "macs" else self.params)
        for t in self.terms.get(metric, []):
            total -= t.amount * (1.0 - math.prod(kept[u] for u in t.units))
        return total


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def resolve_ignored(model: nn.Module, patterns: list[str]) -> list[str]:
    """Module names matched by the glob ``patterns``, plus the always-ignored ones and the classifier.

    Raises:
        ValueError: A pattern matches no module; the message shows real names.
    """
    names = [n for n, _ in model.named_modules() if n]
    out = {n for n in names for p in ALWAYS_IGNORED if _matches(n, p)}
    cls = classifier_of(model)
    if cls is not None and cls[0]:
        out.add(cls[0])
    for i, pat in enumerate(patterns):
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            examples = ", ".join(names[:1] + [n for n in names if n.count(".") >= 2][:3])
            raise ValueError(
                f"ignored_layers[{i}]: '{pat}' matches no module{did_you_mean(pat, names)}; "
                f"module names look like {examples}"
            )
        out.update(hits)
    return sorted(out)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # cls_token/pos_embed live on the residual stream, which is never pruned here, so
    # torch-pruning's notice about how it would prune them is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
        yield


def _expand(model: nn.Module, names: list[str]) -> list[nn.Module]:
    mods = dict(model.named_modules())
    out: list[nn.Module] = []
    for n in names:
        out.extend(mods[n].modules())
    return out


def _split_ignored(model: nn.Module, ignored: list[str]) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(hard, soft)``: modules whose groups are never touched, and the classifier (outputs kept only)."""
    cls = classifier_of(model)
    cls_mod = cls[1] if cls is not None else None
    hard = [m for m in _expand(model, [n for n in ignored if cls is None or n != cls[0]])]
    return hard, ([cls_mod] if cls_mod is not None else [])


def find_layout(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ignored: list[str],
    *,
    round_to: int | None,
    importance: Any = None,
) -> Layout:
    """Sort the dependency graph's groups of ``model`` into prunable units and price them.

    Args:
        model: The model (its ``.grad`` must be set when ``importance`` reads gradients).
        example_inputs: Tracing inputs.
        ignored: Module names never pruned (the classifier among them keeps only its outputs).
        round_to: Widths stay multiples of this; the minimum FFN / channel width.
        importance: When given, each unit's per-head / per-neuron scores are filled.
    """
    import torch_pruning as tp

    attn = attention_modules(model)
    transformer = bool(attn)
    proj_owner = {id(p): name for name, a in attn.items() for p in projections(a)}
    name_of = {id(m): n for n, m in model.named_modules()}
    total, per = module_macs(model, example_inputs[:1])
    with _quiet(), torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    layout = Layout(macs=total, params=count_params(model), ignored=list(ignored))
    hard, soft = _split_ignored(model, ignored)
    hard_ids = {id(m) for m in hard}
    soft_ids = {id(m) for m in soft}
    dim_unit: dict[tuple[int, str], str] = {}
    for group in dg.get_all_groups(ignored_layers=hard + soft, root_module_types=list(_LAYERS)):
        # torch-pruning skips a group only when an ignored layer produces it; an ignored
        # consumer (e.g. an attention's output projection) must keep its inputs too.
        if any(id(dep.target.module) in hard_ids for dep, _ in group):
            continue
        deps = [
            (dep.target.module, dg.is_out_channel_pruning_fn(dep.handler), dep.target.type)
            for dep, _ in group
        ]
        outs = [m for m, is_out, _ in deps if is_out and isinstance(m, _LAYERS)]
        if any(id(m) in soft_ids for m in outs):
            continue
        free = any(t == tp.ops.OPTYPE.PARAMETER or isinstance(m, nn.Embedding) for m, _, t in deps)
        residual = free or (transformer and any(isinstance(m, nn.LayerNorm) for m, _, _ in deps))
        feeds_classifier = any(id(m) in soft_ids and not is_out for m, is_out, _ in deps)
        owners = {proj_owner[id(m)] for m in outs if id(m) in proj_owner}
        unit: Unit | None = None
        if owners:
            if not residual and len(owners) == 1:
                name = next(iter(owners))
                a = attn[name]
                if all(any(m is p for m in outs) for p in projections(a)):
                    prods = tuple(name_of[id(p)] for p in projections(a))
                    unit = Unit("heads", name, heads_of(a), 1, 0.0, prods)
        elif transformer:
            if not residual and len(outs) == 1 and isinstance(outs[0], nn.Linear) and not feeds_classifier:
                root = outs[0]
                minimum = min(round_to or 1, root.out_features)
                unit = Unit("ffn", name_of[id(root)], root.out_features, minimum, 0.0, (name_of[id(root)],))
        elif outs and not residual:
            size = _width(outs[0])
            if all(_width(m) == size for m in outs):
                minimum = min(round_to or 1, size)
                prods = tuple(name_of[id(m)] for m in outs)
                unit = Unit("channels", prods[0], size, minimum, 0.0, prods)
        if unit is None:
            layout.blocked.extend(name_of[id(m)] for m in outs if id(m) in name_of)
            continue
        for m, is_out, _ in deps:
            if isinstance(m, _LAYERS):
                dim_unit.setdefault((id(m), "out" if is_out else "in"), unit.name)
            elif isinstance(m, _NORMS):
                dim_unit.setdefault((id(m), "out"), unit.name)
        if importance is not None:
            fused = None
            if unit.kind == "heads" and len(unit.producers) == 1:
                fused = projections(attn[unit.name])[0].out_features
            unit = _with_scores(unit, group, importance, fused_out=fused)
        layout.units.append(unit)
    layout.blocked = sorted(set(layout.blocked))
    layout.terms = _terms(model, per, dim_unit, {u.name for u in layout.of_kind("heads")})
    costs: dict[str, float] = {}
    for t in layout.terms["macs"]:
        for u in t.units:
            costs[u] = costs.get(u, 0.0) + t.amount
    layout.units = [
        Unit(u.kind, u.name, u.size, u.min_size, costs.get(u.name, 0.0) / u.size, u.producers, u.scores)
        for u in layout.units
    ]
    return layout


def _terms(
    model: nn.Module, per: dict[str, float], dim_unit: dict[tuple[int, str], str], head_units: set[str]
) -> dict[str, list[Term]]:
    """MAC and parameter shares of every layer, each tied to the units its input and output dims are in."""
    macs: list[Term] = []
    params: list[Term] = []
    mods = dict(model.named_modules())
    for name, m in mods.items():
        i, o = dim_unit.get((id(m), "in")), dim_unit.get((id(m), "out"))
        if isinstance(m, _LAYERS):
            depthwise = not isinstance(m, nn.Linear) and m.groups > 1 and m.groups == m.in_channels
            both = tuple(dict.fromkeys(u for u in ((o,) if depthwise else (i, o)) if u is not None))
            if both and per.get(name, 0.0):
                macs.append(Term(per[name], both))
            if both and m.weight is not None:
                params.append(Term(float(m.weight.numel()), both))
            if o is not None and m.bias is not None:
                params.append(Term(float(m.bias.numel()), (o,)))
        elif isinstance(m, _NORMS) and o is not None:
            n = sum(p.numel() for p in m.parameters(recurse=False))
            if n:
                params.append(Term(float(n), (o,)))
        if name in head_units:
            # The attention matmuls (Q·Kᵀ, probs·V) are the module's MACs outside its layers.
            inner = per.get(name, 0.0) - sum(
                per.get(f"{name}.{c}", 0.0) for c, sub in m.named_modules() if c and isinstance(sub, _LAYERS)
            )
            if inner > 0:
                macs.append(Term(inner, (name,)))
    return {"macs": macs, "params": params}


def _with_scores(unit: Unit, group: Any, importance: Any, *, fused_out: int | None = None) -> Unit:
    imp = importance(group)
    if imp is None:  # no parameterised layer in the group: nothing to rank by
        imp = torch.ones(unit.size)
    imp = imp.detach().float().cpu()
    if unit.kind == "heads":
        # A head's score is the mean of its channels' scores, as in torch-pruning. A fused qkv
        # orders its outputs [q heads | k heads | v heads], so each third holds every head.
        if fused_out is not None and imp.numel() == fused_out:
            imp = imp.view(3, unit.size, -1).mean((0, 2))
        else:
            imp = imp.view(unit.size, -1).mean(1)
    return Unit(
        unit.kind, unit.name, unit.size, unit.min_size, unit.cost, unit.producers, tuple(imp.tolist())
    )


def make_pruner(
    model: nn.Module,
    example_inputs: torch.Tensor,
    importance: Any,
    layout: Layout,
    plan: dict[str, int],
) -> Any:
    """A one-step torch-pruning ``BasePruner`` on ``model`` that removes exactly ``plan``.

    Within each unit torch-pruning removes the lowest-scored heads or neurons; the
    per-layer ratios are chosen so that its rounding removes exactly the planned counts.

    Args:
        model: The model to prune (module names as in ``layout``).
        example_inputs: Tracing inputs.
        importance: A torch-pruning ``Importance``.
        layout: Units found by ``find_layout`` on ``model``.
        plan: Unit name -> heads or neurons to remove.
    """
    import torch_pruning as tp

    mods = dict(model.named_modules())
    attn = attention_modules(model)
    num_heads: dict[nn.Module, int] = {}
    for a in attn.values():
        for p in projections(a):
            num_heads[p] = heads_of(a)
    unit_names = {u.name for u in layout.units}
    # Attention modules that are not units (blocked by the graph) are kept whole.
    keep = (
        [n for n in layout.ignored if n in mods]
        + list(layout.blocked)
        + [n for n in attn if n not in unit_names]
    )
    hard, soft = _split_ignored(model, keep)
    ratio_dict: dict[nn.Module, float] = {}
    head_dict: dict[nn.Module, float] = {}
    for u in layout.units:
        c = plan.get(u.name, 0)
        if c <= 0:
            continue
        if c > u.removable:
            raise ValueError(f"plan removes {c} of {u.size} from '{u.name}' (at most {u.removable} may go)")
        if u.kind in WIDTH_KINDS:
            # BasePruner removes n - int(n * (1 - r)) channels: r = (c - 0.5) / n gives exactly c.
            for p in u.producers:
                ratio_dict[mods[p]] = (c - 0.5) / u.size
        else:
            projs = projections(mods[u.name])
            # Heads are removed only in a scope whose width ratio is positive; with
            # prune_head_dims=False that width ratio prunes nothing itself.
            ratio_dict[projs[0]] = _ENABLE_RATIO
            for p in projs:
                # ceil(r * H) heads go: r = (c - 0.5) / H gives exactly c.
                head_dict[p] = (c - 0.5) / u.size
    with _quiet(), torch.enable_grad():
        return tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=importance,
            global_pruning=False,
            pruning_ratio=0.0,
            pruning_ratio_dict=ratio_dict,
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=0.0,
            head_pruning_ratio_dict=head_dict,
            ignored_layers=hard + soft,
            # Pass fresh dicts: BasePruner's defaults are shared mutable objects it writes into.
            in_channel_groups={},
            out_channel_groups={},
            iterative_steps=1,
            root_module_types=list(_LAYERS),
        )


def _unit_size(mods: dict[str, nn.Module], u: Unit) -> int:
    return heads_of(mods[u.name]) if u.kind == "heads" else _width(mods[u.producers[0]])


def apply_pruner(pruner: Any, model: nn.Module, layout: Layout, plan: dict[str, int]) -> None:
    """Run one pruning step, then check that exactly ``plan`` was removed.

    Raises:
        InfeasiblePlanError: A group would leave a unit below its minimum (checked before it is pruned).
        RuntimeError: torch-pruning removed other counts than planned; names the unit.
    """
    mods = dict(model.named_modules())
    minimum: dict[int, tuple[str, int]] = {}
    for u in layout.units:
        if u.kind == "heads":
            a = mods[u.name]
            for lin in projections(a):
                minimum[id(lin)] = (u.name, lin.out_features // heads_of(a))
        else:
            for p in u.producers:
                minimum[id(mods[p])] = (u.name, u.min_size)
    widths = {name: head_width(a) for name, a in attention_modules(model).items()}
    with _quiet():
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                m = dep.target.module
                if id(m) in minimum and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                    name, lo = minimum[id(m)]
                    left = _width(m) - len(set(idxs))
                    if left < lo:
                        raise InfeasiblePlanError(name, left, lo)
            group.prune()
    sync_heads(model, widths)
    mods = dict(model.named_modules())
    for u in layout.units:
        now = _unit_size(mods, u)
        if now != u.size - plan.get(u.name, 0):
            raise RuntimeError(
                f"torch-pruning left {now} {u.kind} in '{u.name}', planned {u.size - plan.get(u.name, 0)}"
            )


def sync_heads(model: nn.Module, widths: dict[str, int]) -> None:
    """Set each attention module's head count (and every attribute derived from it) from its pruned
    projections, the head width kept.

    Raises:
        ValueError: The projections are no longer whole, consistent heads; names the module.
    """
    for name, a in attention_modules(model).items():
        hd = widths[name]
        style = attention_style(a)
        assert style is not None
        outs = {p: getattr(a, p).out_features for p in style.projs}
        fused = len(style.projs) == 1
        inner = outs["qkv"] // 3 if fused else outs[style.projs[-1]]
        o = getattr(a, style.out_proj, None) if style.out_proj else None
        o_in = o.in_features if isinstance(o, nn.Linear) else inner
        bad = (
            (fused and outs["qkv"] % 3)
            or (not fused and len(set(outs.values())) != 1)
            or inner % hd
            or o_in != inner
            or inner == 0
        )
        if bad:
            raise ValueError(
                f"after pruning, attention '{name}' is inconsistent: {style.projs} out {outs}, "
                f"output projection in {o_in}, head width {hd}; expected equal multiples of the head width"
            )
        set_heads(a, inner // hd, hd)


@torch.no_grad()
def check_forward(model: nn.Module, example_inputs: torch.Tensor, expected: torch.Size) -> None:
    """Run ``model`` on ``example_inputs`` and check the output shape.

    Raises:
        ValueError: The forward pass fails (names the module where) or the output shape changed.
    """
    names = {id(m): n for n, m in model.named_modules()}
    entered: list[str] = []
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: entered.append(names[id(mod)])) for m in leaves]
    was = model.training
    model.eval()
    try:
        out = model(example_inputs)
    except RuntimeError as e:
        where = entered[-1] if entered else type(model).__name__
        raise ValueError(
            f"after pruning, the forward pass fails in '{where}': {str(e).splitlines()[0]}"
        ) from e
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if tuple(out.shape) != tuple(expected):
        where = entered[-1] if entered else type(model).__name__
        raise ValueError(
            f"after pruning, the output shape is {tuple(out.shape)} instead of {tuple(expected)} "
            f"(last layer run: '{where}')"
        )
