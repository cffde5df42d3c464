"""Load and check a pipeline file: schema, stage order, references, in one pass, before any work."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from compress._utils.registry import did_you_mean
from compress.config._format import format_validation_error
from compress.config.loader import YamlDoc, format_path, read_yaml
from compress.config.schema import PipelineConfigBase, TargetConfig, pipeline_model
from compress.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    from compress.data import DataEnv


@dataclass
class LoadedPipeline:
    """A validated pipeline with where it came from.

    Attributes:
        config: The validated pipeline (``teacher.checkpoint`` resolved to an absolute path).
        path: The YAML file.
        doc: Parsed YAML with line numbers (for messages raised later).
        targets: Deploy targets the pipeline references, by name.
        deploy_dir: The folder targets were read from (``None`` if none was found).
    """

    config: Any
    path: Path
    doc: YamlDoc
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    deploy_dir: Path | None = None

    def where(self, path: tuple[str | int, ...]) -> str:
        """``file:line: yaml.path`` for messages about ``path``."""
        line = self.doc.line_of(path)
        return f"{self.doc.file}:{line}: {format_path(path)}" if line else f"{self.doc.file}: {format_path(path)}"

    def data_env(self, cache_dir: Path | None = None) -> DataEnv:
        """What the data source needs besides ``data:``: the YAML's folder, a cache, the teacher's tokenizer.

        Args:
            cache_dir: ``<run_dir>/data/cache``; ``None`` (``compress validate``): no cache. Cache
                writes are held until ``DataEnv.flush_cache()``, so a run that fails its checks
                writes nothing.

        Raises:
            MissingDependency: The teacher's ``path: pkg:<package>/...`` names a package that is not installed.
        """
        from compress._utils.paths import resolve_path
        from compress.data import DataEnv

        t = self.config.teacher
        hf_path = t.config.get("path") if t.family == "hf" else None
        tokenizer = resolve_path(hf_path, base_dir=self.path.parent) if isinstance(hf_path, str) else None
        return DataEnv(
            base_dir=self.path.parent, cache_dir=cache_dir, tokenizer_path=tokenizer, hold_cache_writes=cache_dir is not None
        )


def find_deploy_dir(pipeline_path: Path, explicit: Path | None = None) -> Path | None:
    """Where deploy targets live: ``explicit``, else ``deploy/`` beside or above the pipeline, else ``./deploy``."""
    if explicit is not None:
        return explicit
    here = pipeline_path.resolve().parent
    for cand in (here / "deploy", here.parent / "deploy", Path.cwd() / "deploy"):
        if cand.is_dir():
            return cand
    return None


def load_target(path: str | os.PathLike[str]) -> TargetConfig:
    """Read and validate one deploy target file (its ``name`` must equal the file stem).

    Raises:
        ConfigError: With file, line and key for every problem.
    """
    doc = read_yaml(path, what="deploy target")
    try:
        target = TargetConfig.model_validate(doc.data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, doc, TargetConfig)) from None
    stem = Path(path).stem
    if target.name != stem:
        raise ConfigError(
            f"{doc.file}:{doc.line_of(('name',))}: name: got '{target.name}'; expected the file stem '{stem}'; "
            "rename the file or the target"
        )
    from compress.runtime import RUNTIMES

    if target.runtime not in RUNTIMES:
        names = RUNTIMES.names()
        raise ConfigError(
            f"{doc.file}:{doc.line_of(('runtime',))}: runtime: got '{target.runtime}'"
            f"{did_you_mean(target.runtime, names)}; expected one of: {', '.join(names)}"
        )
    return target


def list_targets(deploy_dir: Path) -> dict[str, Path]:
    """Target name -> file for every ``*.yaml`` in ``deploy_dir``."""
    return {p.stem: p for p in sorted(deploy_dir.glob("*.yaml"))}


def _precheck_stages(doc: YamlDoc) -> tuple[list[str], set[int]]:
    """Shape and kind of each ``stages`` item, with did-you-mean; returns messages and bad indices."""
    from compress.stages import STAGES

    msgs: list[str] = []
    bad: set[int] = set()
    stages = doc.data.get("stages")
    if stages is None:
        return msgs, bad
    if not isinstance(stages, list):
        line = doc.line_of(("stages",))
        msgs.append(
            f"{doc.file}:{line}: stages: got {type(stages).__name__}; expected a list of one-key mappings "
            "such as `- distill: {epochs: 10}`"
        )
        return msgs, {-1}
    names = STAGES.names()
    for i, item in enumerate(stages):
        line = doc.line_of(("stages", i))
        if not isinstance(item, dict) or len(item) != 1:
            shown = repr(item) if not isinstance(item, dict) else f"a mapping with keys {sorted(item)}"
            msgs.append(
                f"{doc.file}:{line}: stages[{i}]: got {shown[:80]}; expected one stage as a one-key mapping "
                f"`- <kind>: {{...}}` with kind one of: {', '.join(names)}"
            )
            bad.add(i)
            continue
        kind = next(iter(item))
        if kind not in STAGES:
            msgs.append(
                f"{doc.file}:{line}: stages[{i}]: unknown stage kind '{kind}'{did_you_mean(str(kind), names)}; "
                f"valid kinds: {', '.join(names)}"
            )
            bad.add(i)
        elif item[kind] is None:
            item[kind] = {}
    return msgs, bad


def check_order(loaded: LoadedPipeline) -> list[str]:
    """Stage-order rules declared by the stages (``requires``, ``before``, ``max_count``, ``check_order``),
    and their checks against the data config (``check_data``)."""
    from compress.stages import STAGES

    msgs: list[str] = []
    entries = loaded.config.stages
    kinds = [e.kind for e in entries]
    for i, entry in enumerate(entries):
        cls = STAGES.get(entry.kind)
        where = loaded.where(("stages", i, entry.kind))
        earlier = kinds[:i]
        if cls.requires and not (set(earlier) & cls.requires):
            need = " or ".join(sorted(cls.requires))
            article = "an" if need[:1] in "aeiou" else "a"
            msgs.append(
                f"{where}: '{entry.kind}' needs {article} {need} stage before it; add one earlier in stages"
            )
        late = sorted(set(earlier) & cls.before)
        if late:
            msgs.append(
                f"{where}: '{entry.kind}' must come before {', '.join(repr(k) for k in late)}; "
                f"move it up in stages (order now: {', '.join(kinds)})"
            )
        if cls.max_count is not None and kinds[: i + 1].count(entry.kind) == cls.max_count + 1:
            msgs.append(f"{where}: '{entry.kind}' may appear at most {cls.max_count} time(s); remove the extra one")
        for problem in cls.check_order(entry.config, [(e.kind, e.config) for e in entries[:i]]):
            msgs.append(f"{where}: {problem}")
        for problem in cls.missing_dependencies(entry.config):
            msgs.append(f"{where}: {problem}")
        for sub, problem in cls.check_data(entry.config, loaded.config.data):
            msgs.append(f"{loaded.where(('stages', i, entry.kind, *sub))}: {problem}")
    return msgs


def _check_references(loaded: LoadedPipeline, deploy_override: Path | None) -> list[str]:
    """Checkpoint files, deploy targets, gates that need a validate stage, a trained teacher."""
    from compress.stages import STAGES

    cfg = loaded.config
    msgs: list[str] = []
    ck = cfg.teacher.checkpoint
    if ck is not None and Path(ck).is_dir():
        msgs.append(
            f"{loaded.where(('teacher', 'checkpoint'))}: {ck} is a folder; give the checkpoint file inside it"
        )
    elif ck is not None and not Path(ck).is_file():
        msgs.append(f"{loaded.where(('teacher', 'checkpoint'))}: file {ck} not found; fix the path (relative to the YAML)")
    teacher_msgs, teacher_meta = _build_teacher_meta(loaded)
    msgs.extend(teacher_msgs)
    msgs.extend(_check_data(loaded))
    provides_teacher = any(getattr(STAGES.get(e.kind), "provides_teacher", False) for e in cfg.stages)
    if ck is None and not provides_teacher:
        msgs.append(
            f"{loaded.where(('teacher',))}: the teacher has no checkpoint and no stage trains it; "
            "add `checkpoint:` or a `finetune` stage first"
        )
    # deploy targets named by any stage config field called `targets`
    deploy_dir = find_deploy_dir(loaded.path, deploy_override)
    loaded.deploy_dir = deploy_dir
    available = list_targets(deploy_dir) if deploy_dir else {}
    validated: set[str] = set()
    for i, e in enumerate(cfg.stages):
        names = getattr(e.config, "targets", None)
        if not isinstance(names, list):
            continue
        for j, name in enumerate(names):
            where = loaded.where(("stages", i, e.kind, "targets", j))
            if name not in available:
                if deploy_dir is None:
                    msgs.append(f"{where}: target '{name}': no deploy/ folder found beside or above the pipeline; pass --deploy-dir")
                else:
                    msgs.append(
                        f"{where}: unknown target '{name}'{did_you_mean(name, list(available))}; "
                        f"targets in {deploy_dir}: {', '.join(available) or '(none)'}"
                    )
                continue
            try:
                loaded.targets[name] = load_target(available[name])
                validated.add(name)
            except ConfigError as err:
                msgs.extend(err.problems)
    msgs.extend(_check_target_artifacts(loaded))
    msgs.extend(_check_prune_latency_targets(loaded, deploy_dir, available))
    if teacher_meta is not None:
        msgs.extend(_check_quant_overrides(loaded, teacher_meta))
    msgs.extend(_check_tracking(loaded))
    gates = cfg.gates
    for tname in gates.latency:
        where = loaded.where(("gates", "latency", tname))
        if tname not in validated:
            msgs.append(
                f"{where}: latency budget for target '{tname}', which no validate stage measures; "
                f"add it to a validate stage's targets{did_you_mean(tname, sorted(validated))}"
            )
        elif gates.latency[tname].batch not in loaded.targets[tname].batch_sizes:
            msgs.append(
                f"{loaded.where(('gates', 'latency', tname, 'batch'))}: got {gates.latency[tname].batch}; "
                f"expected one of the target's batch_sizes {loaded.targets[tname].batch_sizes}"
            )
    needs_validation = [n for n in ("accuracy", "agreement", "size") if getattr(gates, n) is not None]
    if needs_validation and not validated:
        msgs.append(
            f"{loaded.where(('gates',))}: gates {', '.join(needs_validation)} need measurements; "
            "add a `validate` stage with at least one target"
        )
    return msgs


def _check_data(loaded: LoadedPipeline) -> list[str]:
    """The data source's cheap checks (files exist, file headers, tokenizer folder); loads no data set."""
    from compress.data import SOURCES, DataSourceError

    try:
        SOURCES.get(loaded.config.data.source).preflight(loaded.config.data, loaded.data_env())
    except DataSourceError as e:
        return [f"{loaded.where(e.yaml_path)}: {e.detail}"]
    except BadInputError as e:  # e.g. the teacher's pkg: folder is not installed
        return [f"{loaded.where(('data',))}: {e}"]
    return []


MAX_TEACHER_MODULES = 20_000
"""Most submodules the teacher may have; a larger count is a typo (``depth: 100000000``) that would
exhaust memory even on the meta device."""


class _TooManyModulesError(Exception):
    pass


def _build_teacher_meta(loaded: LoadedPipeline) -> tuple[list[str], Any]:
    """Build the teacher on PyTorch's ``meta`` device (no memory, no weights) to check ``teacher.config``.

    The runner builds it for real (and loads the checkpoint) before it writes anything; this
    catches a wrong builder argument already in ``compress validate``, and stops a size typo
    (``depth: 100000000``) after ``MAX_TEACHER_MODULES`` submodules instead of filling memory.

    Returns:
        The problems, and the meta-device teacher (``None`` when it could not be built; later
        checks that need its module names are then skipped).
    """
    import torch
    from torch.nn.modules.module import register_module_module_registration_hook

    from compress.models import build_model

    t = loaded.config.teacher
    count = 0

    def _count(module: Any, name: str, sub: Any) -> None:
        nonlocal count
        count += 1
        if count > MAX_TEACHER_MODULES:
            raise _TooManyModulesError

    handle = register_module_module_registration_hook(_count)
    try:
        config = dict(t.config)
        if isinstance(config.get("path"), str):  # as the runner does: relative to the pipeline file
            from compress._utils.paths import resolve_path

            config["path"] = str(resolve_path(config["path"], base_dir=loaded.path.parent))
        with torch.device("meta"):
            model = build_model(t.family, config)
    except _TooManyModulesError:
        return [
            f"{loaded.where(('teacher', 'config'))}: {dict(t.config)} builds more than "
            f"{MAX_TEACHER_MODULES:,} modules; check the sizes (depth, layers) in teacher.config"
        ], None
    except NotImplementedError:
        return [], None  # an operation the meta device lacks: the runner's real build decides
    except Exception as e:  # builders raise TypeError, ValueError, ZeroDivisionError, RuntimeError...
        return [
            f"{loaded.where(('teacher', 'config'))}: family '{t.family}' cannot build {dict(t.config)} "
            f"({type(e).__name__}: {str(e)[:200]}); fix teacher.config (see the family's builder arguments)"
        ], None
    finally:
        handle.remove()
    return [], model


def _check_prune_latency_targets(
    loaded: LoadedPipeline, deploy_dir: Path | None, available: dict[str, Path]
) -> list[str]:
    """A stage's ``target: {latency: {target: NAME}}`` (``prune``) must name a deploy target that the
    stage can time candidates on: it exists in the deploy folder and loads, its runtime loads torch
    modules or ONNX files, and it can run on this machine.

    These are the checks the stage makes when it starts (``compress.stages.prune``), made before
    any work. A loaded target joins ``loaded.targets``, so the stage times on the file checked here.
    The budget's ``batch`` is timed as given and need not be among the target's ``batch_sizes``
    (those are what a ``validate`` stage measures).
    """
    from compress.prune.config import PruneTargetConfig
    from compress.runtime import RUNTIMES

    msgs: list[str] = []
    # a target file that failed to load is reported once (here or where a stage's `targets` names it)
    tried = {
        str(n)
        for e in loaded.config.stages
        if isinstance(getattr(e.config, "targets", None), list)
        for n in e.config.targets
    }
    for i, e in enumerate(loaded.config.stages):
        target_cfg = getattr(e.config, "target", None)
        if not isinstance(target_cfg, PruneTargetConfig) or target_cfg.latency is None:
            continue
        name = target_cfg.latency.target
        at = ("stages", i, e.kind, "target", "latency", "target")
        where = loaded.where(at)
        if name not in available:
            if deploy_dir is None:
                msgs.append(
                    f"{where}: target '{name}': no deploy/ folder found beside or above the pipeline; "
                    "pass --deploy-dir"
                )
            else:
                msgs.append(
                    f"{where}: unknown deploy target '{name}'{did_you_mean(name, list(available))}; "
                    f"targets in {deploy_dir}: {', '.join(available) or '(none)'} "
                    f"(fix the name or add {deploy_dir / (name + '.yaml')})"
                )
            continue
        target = loaded.targets.get(name)
        if target is None:
            if name in tried:
                continue
            tried.add(name)
            try:
                target = load_target(available[name])
            except ConfigError as err:
                msgs.extend(err.problems)
                continue
            loaded.targets[name] = target
        runtime = RUNTIMES.get(target.runtime)
        if not runtime.formats & {"torch", "onnx"}:
            msgs.append(
                f"{where}: target '{name}' uses runtime '{target.runtime}', which loads "
                f"{', '.join(sorted(runtime.formats))} files; the prune stage times each candidate as a "
                "torch module or an FP32 ONNX file, so pick a target with a torch or onnxruntime runtime "
                "(e.g. cpu-ort-fp32)"
            )
            continue
        ok, why = runtime.can_run_here(target.device)
        if not ok:
            msgs.append(
                f"{where}: target '{name}' cannot run on this machine ({why}); the prune stage times "
                "candidates on it, so run the pipeline where it can (`compress targets` lists what runs "
                "here) or pick another target"
            )
    return msgs


def _check_tracking(loaded: LoadedPipeline) -> list[str]:
    """``tracking:``: the backend's packages are installed (the backend's own check, before any work)."""
    from compress.tracking import TRACKERS

    t = loaded.config.tracking
    if t is None:
        return []
    where = loaded.where(("tracking",))
    return [f"{where}: {m}" for m in TRACKERS.get(t.backend).missing_dependencies(t)]


_GLOB_CHARS = re.compile(r"[*?\[]")
_REGEX_HINT = re.compile(r"[\\^$+(){}|]")
"""Characters that suggest a regular expression where an fnmatch glob is expected."""


def _check_quant_overrides(loaded: LoadedPipeline, teacher_meta: Any) -> list[str]:
    """Every ``quant.overrides[j].pattern`` must match a quantizable module of the model entering that stage.

    ``prepare_qat`` refuses unmatched patterns when the ``qat`` stage starts; this makes the same
    check before any work, on module names of meta-device models (no weights, no memory): the
    teacher (from ``teacher.config``, or the architecture stored in a compress model file given
    as ``teacher.checkpoint``), then the architecture changes earlier stages make to module
    names (see ``_architectures``). Where that derivation fails (an operation the meta device
    lacks, a student spec that does not fit, an unreadable checkpoint) the check is left to the
    stage.
    """
    import copy

    from compress.distill.student import layer_stack
    from compress.quant.api import is_quantized, quantizable_module_names, unmatched_override_patterns
    from compress.quant.config import QuantConfig

    wanted = {
        i
        for i, e in enumerate(loaded.config.stages)
        if isinstance(getattr(e.config, "quant", None), QuantConfig) and e.config.quant.overrides
    }
    if not wanted:
        return []
    msgs: list[str] = []
    try:
        for i, e, model, how in _architectures(loaded, teacher_meta, until=max(wanted)):
            if i not in wanted:
                continue
            if is_quantized(model):
                return []  # a quantized teacher file: the qat stage refuses it with its own message
            quant: QuantConfig = e.config.quant
            names = quantizable_module_names(copy.deepcopy(model), quant)
            unmatched = set(unmatched_override_patterns(quant, names))
            shapes = _name_shapes(names)
            try:
                stack_name, stack = layer_stack(model)
                layers = f"; layer stack '{stack_name}': {len(stack)} layer(s), numbered from 0"
            except ValueError:
                layers = ""
            for j, o in enumerate(quant.overrides):
                if o.pattern not in unmatched:
                    continue
                hint = (
                    "; patterns are fnmatch globs (* ? [..]), not regular expressions"
                    if _REGEX_HINT.search(o.pattern)
                    else ""
                )
                # a misspelt name gets the closest name; a glob is rarely fixed by the closest string
                close = "" if _GLOB_CHARS.search(o.pattern) else did_you_mean(o.pattern, names)
                msgs.append(
                    f"{loaded.where(('stages', i, e.kind, 'quant', 'overrides', j, 'pattern'))}: got "
                    f"'{o.pattern}', which matches no quantizable module of the model entering {e.kind} "
                    f"({type(model).__name__}: {how}){close}; its {len(names)} quantizable modules "
                    f"(numbers as *): {', '.join(shapes)}{layers}{hint}; give an exact module name or a "
                    "glob that matches one, or remove the override"
                )
    except Exception:  # noqa: BLE001 - the meta-device derivation failed: the qat stage's own check decides
        return []
    return msgs


def _name_shapes(names: list[str]) -> list[str]:
    """Module names with every numeric path part as ``*``, first occurrence order (``blocks.*.attn.q``)."""
    out: dict[str, None] = {}
    for n in names:
        out[".".join("*" if part.isdigit() else part for part in n.split("."))] = None
    return list(out)


def _architectures(
    loaded: LoadedPipeline, teacher_meta: Any, *, until: int
) -> Iterator[tuple[int, Any, Any, str]]:
    """``(index, entry, model, how)`` for stages ``0..until``: the architecture entering each stage.

    Built on the meta device, following the architecture changes that decide module names:

    * the start is the teacher; a ``teacher.checkpoint`` that is a compress model file carries
      its own architecture (read with ``weights_only=True`` and ``mmap``, so its tensors are not
      read);
    * a stage config with a ``student`` field (``distill``) builds the student from the teacher,
      from its own ``student`` or, for the first such stage, the pipeline's ``student:``: the
      layers ``keep_layers`` / ``num_layers`` keep (renumbered), or ``student.model``. Width
      settings (``width``, ``heads``, ``ffn``, ``hidden``) narrow layers and keep every name;
    * a ``layers: {drop: N}`` (``prune``) drops N layers of the layer stack; the stack is
      renumbered, so the names are those of the first ``len - N`` layers whichever go.

    Channel, head and neuron pruning keep every module name.

    Raises:
        Exception: Whatever the derivation meets (the caller skips its check).
    """
    import json

    import torch

    from compress.distill.student import depth_indices, layer_stack, student_by_depth
    from compress.models import build_model
    from compress.models.registry import model_from_spec
    from compress.prune.config import LayerDropConfig

    cfg = loaded.config
    teacher, teacher_how = teacher_meta, "teacher.config"
    ck = cfg.teacher.checkpoint
    if ck is not None:
        obj = torch.load(ck, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(obj, dict) and obj.get("format") == "compress-model/1":
            with torch.device("meta"):
                teacher = model_from_spec(json.loads(obj["spec"]))
            teacher_how = "the architecture stored in teacher.checkpoint"
        del obj
    model, how, first_student = teacher, teacher_how, True
    for i, e in enumerate(cfg.stages[: until + 1]):
        yield i, e, model, how
        c = e.config
        if "student" in type(c).model_fields:
            spec = c.student if c.student is not None else (cfg.student if first_student else None)
            spec_path = f"stages[{i}].{e.kind}.student" if c.student is not None else "student"
            first_student = False
            if spec is None:
                pass  # the model entering the stage trains on
            elif spec.model is not None:
                mcfg = dict(spec.model.config)
                if isinstance(mcfg.get("path"), str):
                    from compress._utils.paths import resolve_path

                    mcfg["path"] = str(resolve_path(mcfg["path"], base_dir=loaded.path.parent))
                with torch.device("meta"):
                    model = build_model(spec.model.family, mcfg)
                how = f"{spec_path}.model"
            elif spec.keep_layers is not None or spec.num_layers is not None:
                _, stack = layer_stack(teacher)
                keep = depth_indices(len(stack), spec.keep_layers, spec.num_layers)
                model = student_by_depth(teacher, keep)
                how = f"{teacher_how}, {spec_path} keeps layers {keep}"
            else:
                model, how = teacher, teacher_how
            widths = ("width", "heads", "ffn", "hidden")
            if spec is not None and any(getattr(spec, a) is not None for a in widths):
                how = f"{how}, {spec_path} narrows widths"
        layers = getattr(c, "layers", None)
        if isinstance(layers, LayerDropConfig):
            _, stack = layer_stack(model)
            n_drop = layers.count(len(stack))
            if n_drop >= len(stack):
                raise ValueError("drops every layer")  # the prune stage says so when it runs
            model = student_by_depth(model, list(range(len(stack) - n_drop)))
            how = f"{how}, stages[{i}].{e.kind}.layers drops {n_drop} of {len(stack)} layers"


def _check_target_artifacts(loaded: LoadedPipeline) -> list[str]:
    """Each target a stage names must deploy an artifact among the ``formats`` of earlier stages."""
    msgs: list[str] = []
    produced: list[str] = []
    for i, e in enumerate(loaded.config.stages):
        names = getattr(e.config, "targets", None)
        if isinstance(names, list):
            for j, name in enumerate(names):
                target = loaded.targets.get(name)
                if target is None or target.artifact in produced:
                    continue
                msgs.append(
                    f"{loaded.where(('stages', i, e.kind, 'targets', j))}: target '{name}' deploys artifact "
                    f"'{target.artifact}', which no earlier stage writes (formats written: "
                    f"{', '.join(produced) or 'none'}); add '{target.artifact}' to the export stage's "
                    f"formats or change artifact: in {(loaded.deploy_dir or Path('deploy')) / f'{name}.yaml'}"
                )
        formats = getattr(e.config, "formats", None)
        if isinstance(formats, list):
            produced.extend(str(f) for f in formats)
    return msgs


def load_config(path: str | os.PathLike[str], *, deploy_dir: str | os.PathLike[str] | None = None) -> LoadedPipeline:
    """Read, validate and cross-check a pipeline file. Runs no stage.

    Args:
        path: The pipeline YAML.
        deploy_dir: Folder of deploy targets; default: ``deploy/`` beside or above the YAML, then ``./deploy``.

    Returns:
        The validated pipeline with its targets.

    Raises:
        ConfigError: Every problem found, each with file, line, YAML path and the fix.

    Example:
        >>> loaded = load_config("pipelines/digits.yaml")  # doctest: +SKIP
        >>> [s.kind for s in loaded.config.stages]  # doctest: +SKIP
        ['finetune', 'distill', 'prune', 'qat', 'export', 'validate']
    """
    p = Path(path)
    if deploy_dir is not None and not Path(deploy_dir).is_dir():
        raise ConfigError(
            f"--deploy-dir {deploy_dir}: not a folder; pass the folder that holds the target YAMLs"
        )
    doc = read_yaml(p)
    model = pipeline_model()
    msgs, bad = _precheck_stages(doc)
    try:
        cfg = model.model_validate(doc.data)
    except ValidationError as e:
        formatted = format_validation_error(e, doc, model)
        errs = e.errors(include_url=False)
        keep = [
            m
            for m, err in zip(formatted, errs)
            if not (len(err["loc"]) >= 2 and err["loc"][0] == "stages" and (err["loc"][1] in bad or -1 in bad))
            and not (-1 in bad and err["loc"][:1] == ("stages",))
        ]
        raise ConfigError(msgs + keep) from None
    if msgs:
        raise ConfigError(msgs)
    if cfg.teacher.checkpoint is not None and not cfg.teacher.checkpoint.is_absolute():
        resolved = (p.resolve().parent / cfg.teacher.checkpoint).resolve()
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"checkpoint": resolved})})
    loaded = LoadedPipeline(config=cfg, path=p, doc=doc)
    problems = check_order(loaded) + _check_references(loaded, Path(deploy_dir) if deploy_dir else None)
    if problems:
        raise ConfigError(problems)
    return loaded


def dump_config(cfg: PipelineConfigBase) -> dict[str, Any]:
    """The canonical YAML-ready form: stages back as one-key mappings."""
    data = cfg.model_dump(mode="json", exclude={"stages"})
    data["stages"] = [{e.kind: e.config.model_dump(mode="json")} for e in cfg.stages]
    return data
