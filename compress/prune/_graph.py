"""torch-pruning glue: what is prunable, a pruner for a plan, and safe application.

torch-pruning's ``DependencyGraph`` finds the coupled channels (q/k/v outputs
with the output projection's inputs; ``fc1`` outputs with ``fc2`` inputs).
This module sorts its groups into *units*:

* ``heads``: the group of one attention module (any submodule with an integer
  ``num_heads`` and ``nn.Linear`` children ``q``, ``k``, ``v``); whole heads
  are removed and the head width kept.
* ``ffn``: a group with exactly one ``nn.Linear`` producing it and no
  LayerNorm or free parameter in it (an FFN's hidden neurons).

Every other group (the residual stream: patch embedding, output projections,
``fc2`` outputs, norms, positions) is never pruned in this form. Each unit is
priced in MACs per head or neuron from one counted forward pass. A *plan* maps
unit names to how many heads or neurons to remove; ``make_pruner`` turns it
into a torch-pruning ``BasePruner`` with per-layer ratios chosen so that its
rounding removes exactly those counts.
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from compress._utils.registry import did_you_mean
from compress.models.stats import module_macs

ALWAYS_IGNORED = ("patch_embed", "head")
"""Module names never pruned whatever the config says (input embedding and classifier)."""

_ENABLE_RATIO = 1e-6
"""A width ratio > 0 for attention scopes: torch-pruning removes heads only in such a scope."""


class InfeasiblePlanError(Exception):
    """A pruning plan would leave a layer below its minimum width."""

    def __init__(self, layer: str, remaining: int, minimum: int) -> None:
        self.layer = layer
        super().__init__(f"'{layer}' would keep {remaining} channels (minimum {minimum})")


@dataclass(frozen=True)
class Unit:
    """A prunable structure of the current model.

    Attributes:
        kind: ``heads`` (count of heads) or ``ffn`` (hidden neurons).
        name: Attention module name for heads; the group's producing Linear for ffn.
        size: Current heads or neurons.
        min_size: Fewest that must stay (1 head; ``round_to or 1`` neurons).
        cost: MACs per example that one head or neuron costs (exact: with the residual
            width fixed, every MAC of the unit's layers scales linearly with its width).
        scores: Importance of each head or neuron, normalised within the unit
            (filled only for global ranking).
    """

    kind: Literal["heads", "ffn"]
    name: str
    size: int
    min_size: int
    cost: float
    scores: tuple[float, ...] = ()

    @property
    def removable(self) -> int:
        """How many may still go."""
        return max(0, self.size - self.min_size)


@dataclass
class Layout:
    """The prunable units of a model, its cost, and the layers excluded from pruning.

    Attributes:
        units: Prunable units, in graph order.
        macs: MACs per example of the model now.
        ignored: Module names excluded by the config or always.
        blocked: Producing Linear layers of groups this form never prunes (residual stream).
    """

    units: list[Unit] = field(default_factory=list)
    macs: int = 0
    ignored: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Unit]:
        """Units of one kind."""
        return [u for u in self.units if u.kind == kind]


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Submodules with an integer ``num_heads`` and ``nn.Linear`` children ``q``, ``k``, ``v``, by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "num_heads", None), int)
        and all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q", "k", "v"))
    }


def resolve_ignored(model: nn.Module, patterns: list[str]) -> list[str]:
    """Module names matched by the glob ``patterns``, plus the always-ignored ones.

    Raises:
        ValueError: A pattern matches no module; the message shows real names.
    """
    names = [n for n, _ in model.named_modules() if n]
    out = {n for n in ALWAYS_IGNORED if n in names}
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
        ignored: Module names never pruned.
        round_to: FFN widths stay multiples of this; the minimum FFN width.
        importance: When given, each unit's per-head / per-neuron scores are filled.
    """
    import torch_pruning as tp

    attn = attention_modules(model)
    qkv_owner = {id(getattr(a, x)): name for name, a in attn.items() for x in ("q", "k", "v")}
    name_of = {id(m): n for n, m in model.named_modules()}
    total, per = module_macs(model, example_inputs[:1])
    with _quiet(), torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    layout = Layout(macs=total, ignored=list(ignored))
    kept = _expand(model, ignored)
    kept_ids = {id(m) for m in kept}
    for group in dg.get_all_groups(ignored_layers=kept, root_module_types=[nn.Linear]):
        # torch-pruning skips a group only when an ignored layer produces it; an ignored
        # consumer (e.g. an attention's output projection) must keep its inputs too.
        if any(id(dep.target.module) in kept_ids for dep, _ in group):
            continue
        outs = [
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Linear)
        ]
        residual = any(
            isinstance(dep.target.module, nn.LayerNorm) or dep.target.type == tp.ops.OPTYPE.PARAMETER
            for dep, _ in group
        )
        owners = {qkv_owner[id(m)] for m in outs if id(m) in qkv_owner}
        unit: Unit | None = None
        if owners and not residual and len(owners) == 1:
            name = next(iter(owners))
            a = attn[name]
            if all(any(m is getattr(a, x) for m in outs) for x in ("q", "k", "v")):
                # q/k/v/o and both attention matmuls all scale with the head count.
                unit = Unit("heads", name, a.num_heads, 1, per.get(name, 0.0) / a.num_heads)
        elif not owners and not residual and len(outs) == 1:
            root = outs[0]
            cost = 0.0
            seen: set[int] = set()
            for dep, _ in group:
                m = dep.target.module
                if isinstance(m, nn.Linear) and id(m) not in seen:
                    seen.add(id(m))
                    width = m.out_features if dg.is_out_channel_pruning_fn(dep.handler) else m.in_features
                    cost += per.get(name_of[id(m)], 0.0) / width
            minimum = min(round_to or 1, root.out_features)
            unit = Unit("ffn", name_of[id(root)], root.out_features, minimum, cost)
        if unit is None:
            layout.blocked.extend(name_of[id(m)] for m in outs if id(m) in name_of)
            continue
        if importance is not None:
            unit = _with_scores(unit, group, importance)
        layout.units.append(unit)
    layout.blocked = sorted(set(layout.blocked))
    return layout


def _with_scores(unit: Unit, group: Any, importance: Any) -> Unit:
    imp = importance(group)
    if imp is None:  # no parameterised layer in the group: nothing to rank by
        imp = torch.ones(unit.size)
    imp = imp.detach().float().cpu()
    if unit.kind == "heads":
        # A head's score is the mean of its channels' scores, as in torch-pruning.
        imp = imp.view(unit.size, -1).mean(1)
    return Unit(unit.kind, unit.name, unit.size, unit.min_size, unit.cost, tuple(imp.tolist()))


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
        for x in ("q", "k", "v"):
            num_heads[getattr(a, x)] = a.num_heads
    unit_names = {u.name for u in layout.units}
    # Attention modules that are not units (blocked by the graph) are kept whole.
    keep = list(layout.ignored) + list(layout.blocked) + [n for n in attn if n not in unit_names]
    ratio_dict: dict[nn.Module, float] = {}
    head_dict: dict[nn.Module, float] = {}
    for u in layout.units:
        c = plan.get(u.name, 0)
        if c <= 0:
            continue
        if c > u.removable:
            raise ValueError(f"plan removes {c} of {u.size} from '{u.name}' (at most {u.removable} may go)")
        if u.kind == "ffn":
            # BasePruner removes n - int(n * (1 - r)) channels: r = (c - 0.5) / n gives exactly c.
            ratio_dict[mods[u.name]] = (c - 0.5) / u.size
        else:
            a = mods[u.name]
            # Heads are removed only in a scope whose width ratio is positive; with
            # prune_head_dims=False that width ratio prunes nothing itself.
            ratio_dict[a.q] = _ENABLE_RATIO
            for x in ("q", "k", "v"):
                # ceil(r * H) heads go: r = (c - 0.5) / H gives exactly c.
                head_dict[getattr(a, x)] = (c - 0.5) / u.size
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
            ignored_layers=_expand(model, keep),
            # Pass fresh dicts: BasePruner's defaults are shared mutable objects it writes into.
            in_channel_groups={},
            out_channel_groups={},
            iterative_steps=1,
            root_module_types=[nn.Linear],
        )


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
            for x in ("q", "k", "v"):
                lin = getattr(a, x)
                minimum[id(lin)] = (u.name, lin.out_features // a.num_heads)
        else:
            minimum[id(mods[u.name])] = (u.name, u.min_size)
    head_width = {name: a.q.out_features // a.num_heads for name, a in attention_modules(model).items()}
    with _quiet():
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                m = dep.target.module
                if id(m) in minimum and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                    name, lo = minimum[id(m)]
                    left = m.out_features - len(set(idxs))
                    if left < lo:
                        raise InfeasiblePlanError(name, left, lo)
            group.prune()
    sync_heads(model, head_width)
    mods = dict(model.named_modules())
    for u in layout.units:
        now = mods[u.name].num_heads if u.kind == "heads" else mods[u.name].out_features
        if now != u.size - plan.get(u.name, 0):
            raise RuntimeError(
                f"torch-pruning left {now} {u.kind} in '{u.name}', planned {u.size - plan.get(u.name, 0)}"
            )


def sync_heads(model: nn.Module, head_width: dict[str, int]) -> None:
    """Set each attention module's ``num_heads`` from its pruned q width (head width kept).

    Raises:
        ValueError: q/k/v/o widths are no longer whole, consistent heads; names the module.
    """
    for name, a in attention_modules(model).items():
        hd = head_width[name]
        widths = {x: getattr(a, x).out_features for x in ("q", "k", "v")}
        o = getattr(a, "o", None)
        o_in = o.in_features if isinstance(o, nn.Linear) else widths["v"]
        if len(set(widths.values())) != 1 or widths["q"] % hd or o_in != widths["v"]:
            raise ValueError(
                f"after pruning, attention '{name}' is inconsistent: q/k/v out {widths}, o in {o_in}, "
                f"head width {hd}; expected equal multiples of the head width"
            )
        a.num_heads = widths["q"] // hd


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
