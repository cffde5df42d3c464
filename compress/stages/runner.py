"""The runner: resolves teacher and data, runs the stages in order, caches, records, gates.

For every stage it computes a content key from the previous key and the
stage's config (the first key covers the code version, seed, teacher config
and checkpoint bytes, and the data). A stage whose ``result.json`` carries the
same key, and whose saved model and artifacts still match their hashes, is
skipped and its outputs reloaded. Otherwise it runs; its training loop
resumes from its own per-epoch checkpoint if a previous attempt was killed.
``result.json`` is written last (atomically), so it marks a finished stage.
The runner never branches on a stage's name.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from compress import __version__
from compress._utils.interrupt import check_interrupt
from compress._utils.io import atomic_write_json, atomic_write_text, read_json, sha256_file, sha256_json
from compress._utils.lock import run_lock
from compress._utils.progress import Reporter
from compress.config.api import LoadedPipeline, dump_config
from compress._utils.paths import resolve_path
from compress.data import SOURCES, DataSourceError, data_fingerprint, load_or_make_splits
from compress.errors import BadInputError, CheckpointError, CompressError, DataError, StageError
from compress.models import build_model, load_model, save_model
from compress.models.registry import load_checkpoint_file, load_state_dict_checked, model_from_spec
from compress.models.stats import count_macs, count_params
from compress.stages.base import STAGES, Artifact, StageContext, StageResult
from compress.tracking import open_tracker
from compress.train import evaluate

REPORT_FILES = ("report.md", "report.html", "metrics.json", "junit.xml", "manifest.json", "pipeline.yaml")

MANIFEST_VERSION = 1


@dataclass
class RunOutcome:
    """What a finished run reports.

    Attributes:
        run_dir: The run directory.
        exit_code: 0 all gates passed, 1 a gate failed.
        gates: Gate results (dicts with name, passed, measured, budget, message).
        manifest: The manifest as written.
    """

    run_dir: Path
    exit_code: int
    gates: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def _model_metrics(model: torch.nn.Module, data: Any, eval_bs: int) -> dict[str, Any]:
    example = data.tensors("val")[0][:2]
    out: dict[str, Any] = {
        "params": count_params(model),
        "macs": count_macs(model, example),
    }
    for split in ("val", "test"):
        ev = evaluate(model, data, split, batch_size=eval_bs)
        out[f"{split}_accuracy"] = ev["accuracy"]
        out[f"{split}_macro_accuracy"] = ev["macro_accuracy"]
    return out


def _load_teacher(loaded: LoadedPipeline, data: Any) -> torch.nn.Module:
    """Build the teacher, load its checkpoint and check it runs on the data; all before any file is written.

    Every problem is bad input (exit 2) located at ``teacher.config`` or ``teacher.checkpoint``.
    """
    return _load_source_model(loaded, loaded.config.teacher, ("teacher",), data, loaded.config.data.source)


def _load_source_model(
    loaded: LoadedPipeline, t: Any, at: tuple[str | int, ...], data: Any, source_name: str
) -> torch.nn.Module:
    """Build the model that the model-source config ``t`` (at YAML path ``at``) describes, load its
    checkpoint and check that it runs on ``data``; problems are bad input (exit 2) located in the YAML."""
    where_cfg = loaded.where((*at, "config"))
    if t.checkpoint is not None and not Path(t.checkpoint).is_absolute():  # relative to the pipeline file
        t = t.model_copy(update={"checkpoint": resolve_path(t.checkpoint, base_dir=loaded.path.parent)})
    config = dict(t.config)
    if isinstance(config.get("path"), str):  # model directories are relative to the pipeline file
        config["path"] = str(resolve_path(config["path"], base_dir=loaded.path.parent))
    try:
        model = build_model(t.family, config)
    except CompressError as e:
        if isinstance(e, BadInputError) and not str(e).startswith(str(loaded.doc.file)):
            raise type(e)(f"{where_cfg}: {e}") from None
        raise
    except Exception as e:  # builders raise TypeError, ValueError, ZeroDivisionError, RuntimeError...
        raise BadInputError(
            f"{where_cfg}: family '{t.family}' cannot build {dict(t.config)} ({type(e).__name__}: {e}); "
            f"fix {format_at(at)}.config (see the family's builder arguments)"
        ) from None
    if t.checkpoint is not None:
        model = _load_teacher_checkpoint(loaded, model, t, at)
    model.eval()
    x = data.inputs[:2]
    try:
        with torch.no_grad():
            logits = model(x)
    except Exception as e:
        raise BadInputError(
            f"{where_cfg}: the {at[-1]} cannot run on inputs of data source '{source_name}' "
            f"(shape {tuple(x.shape[1:])}): {type(e).__name__}: {str(e)[:200]}; make {format_at(at)}.config match "
            "the data (image size, channels)"
        ) from None
    if logits.ndim != 2 or logits.shape[-1] != data.num_classes:
        got = logits.shape[-1] if logits.ndim == 2 else f"an output of shape {tuple(logits.shape)}"
        raise BadInputError(
            f"{where_cfg}: the {at[-1]} predicts {got} classes but data source "
            f"'{source_name}' has {data.num_classes}; set num_classes: {data.num_classes} "
            "(with a checkpoint trained for it)"
        )
    return model


def _load_stage_data(loaded: LoadedPipeline, dcfg: Any, at: tuple[str | int, ...], stage_dir: Path, env: Any) -> Any:
    """A stage's own data set (``stages[i].<kind>.data``), split with its ``split_seed`` or the pipeline seed,
    split stored in the stage folder."""
    try:
        data = SOURCES.get(dcfg.source)(dcfg, env)
    except DataSourceError as e:
        raise DataError(f"{loaded.where((*at, *e.yaml_path[1:]))}: {e.detail}") from None
    env.flush_cache()
    load_or_make_splits(
        data,
        stage_dir / "splits.json",
        val_fraction=dcfg.val_fraction,
        test_fraction=dcfg.test_fraction,
        seed=loaded.config.seed if dcfg.split_seed is None else dcfg.split_seed,
    )
    return data


def format_at(at: tuple[str | int, ...]) -> str:
    """``("stages", 0, "distill", "teacher")`` -> ``stages[0].distill.teacher``."""
    out = ""
    for p in at:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _load_teacher_checkpoint(
    loaded: LoadedPipeline, model: torch.nn.Module, t: Any = None, at: tuple[str | int, ...] = ("teacher",)
) -> torch.nn.Module:
    """Load ``<at>.checkpoint`` (state dict or compress model file) into ``model``, or refuse it."""
    t = t if t is not None else loaded.config.teacher
    ck = t.checkpoint
    where = loaded.where((*at, "checkpoint"))
    try:
        obj = load_checkpoint_file(ck)
        if isinstance(obj, dict) and obj.get("format") == "compress-model/1":
            try:
                spec = json.loads(obj["spec"])
                family, saved = spec["family"], dict(spec["config"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(
                    f"{ck}: malformed compress model file (spec: {type(e).__name__}: {e})"
                ) from None
            if family != t.family:
                raise CheckpointError(
                    f"{ck}: a compress model file of family '{family}', but {format_at(at)}.family is '{t.family}'; "
                    f"set family: {family} or give a '{t.family}' checkpoint"
                )
            clash = {k: (v, saved[k]) for k, v in t.config.items() if k in saved and saved[k] != v}
            if clash:
                shown = ", ".join(f"{k}: config {a!r} vs file {b!r}" for k, (a, b) in list(clash.items())[:4])
                raise CheckpointError(
                    f"{ck}: the compress model file was saved with another architecture ({shown}); "
                    f"drop these keys from {format_at(at)}.config (the file carries its architecture) or fix them"
                )
            model = model_from_spec(spec)
            load_state_dict_checked(model, obj["state_dict"], source=str(ck))
        else:
            load_state_dict_checked(model, obj, source=str(ck))
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {_checkpoint_problem(ck, e)}") from None
    except CompressError as e:  # e.g. an unknown family or transform named inside the file
        raise CheckpointError(f"{where}: {ck}: {e}") from None
    return model


def _checkpoint_problem(ck: Path, e: CheckpointError) -> str:
    """The message for a refused checkpoint, telling a file that needs code from a corrupt one.

    ``torch.load(weights_only=True)`` raises the same ``UnpicklingError`` for both; only its text
    says which: it names a "GLOBAL <module.name>" to import (code) or another unpickler error (bytes).
    """
    _fix = "re-save it with torch.save(model.state_dict(), path)"
    detail = str(e.__cause__ or "")
    code = re.search(r"GLOBAL ([\w.]+)", detail)
    if code:
        return (
            f"{ck}: refused: loading it would import and run Python code ({code.group(1)}); compress loads "
            f"only tensors and plain containers (weights_only=True); {_fix}"
        )
    if "WeightsUnpickler error" in detail:
        reason = detail.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
        return (
            f"{ck}: not a readable torch checkpoint (corrupt or not written by torch.save: {reason}); {_fix}"
        )
    text = str(e)
    return text if "; " in text else f"{text}; {_fix}"


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that cannot be a folder (bad input, exit 2) before anything is written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInputError(f"run directory {run_dir}: exists and is not a folder; choose another --run-dir")
    anc = run_dir.absolute()
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise BadInputError(
            f"run directory {run_dir}: cannot be created because {anc} is a file, not a folder; "
            "choose another --run-dir"
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        raise BadInputError(f"run directory {run_dir}: {anc} is not writable; choose another --run-dir")


def _remove_stale_temp_files(run_dir: Path) -> None:
    """Delete temporary files of atomic writes that a killed run left behind (``.<name>.*.tmp``)."""
    for p in run_dir.rglob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _stage_batch_size(cfg: Any, yaml_path: str, pipeline: Any) -> tuple[int, str]:
    """The training batch size a stage uses and the YAML key that sets it (first ``batch_size`` found)."""

    def find(obj: Any, path: str) -> tuple[int, str] | None:
        if not hasattr(obj, "model_fields"):
            return None
        for name in type(obj).model_fields:
            v = getattr(obj, name, None)
            if name == "batch_size" and isinstance(v, int):
                return v, f"{path}.{name}"
            hit = find(v, f"{path}.{name}")
            if hit:
                return hit
        return None

    return find(cfg, yaml_path) or (pipeline.data.batch_size, "data.batch_size")


def _oom_message(cfg: Any, yaml_path: str, pipeline: Any) -> str:
    bs, key = _stage_batch_size(cfg, yaml_path, pipeline)
    if bs > 1:
        fix = f"try a smaller batch: set {key}: {bs // 2}"
    else:
        fix = "the batch is already 1: use a smaller model or a GPU with more memory"
    return f"CUDA out of memory at batch size {bs}; {fix} (then run the same command again to resume)"


def _disk_full_message(e: OSError) -> str:
    return (
        f"no space left on device while writing {e.filename or '(unknown file)'}; free space or choose a "
        "--run-dir on another disk, then run the same command again (finished stages are kept)"
    )


def _artifact_ok(run_dir: Path, rec: dict[str, Any]) -> bool:
    p = run_dir / rec["path"]
    return p.is_file() and sha256_file(p) == rec.get("sha256")


def run_pipeline(
    loaded: LoadedPipeline,
    *,
    run_dir: Path | None = None,
    fresh: bool = False,
    rerun: str | None = None,
    reporter: Reporter | None = None,
) -> RunOutcome:
    """Run a loaded pipeline end to end and gate it.

    Args:
        loaded: From ``compress.config.load_config``.
        run_dir: Output folder; default ``runs/<name>``.
        fresh: Ignore cached stage results.
        rerun: A stage (its kind, e.g. ``validate``, or its id, e.g. ``06-validate``) to run again with
            every stage after it, even when cached; the stages before it stay cached (e.g. timing again
            on a quiet machine without training again).
        reporter: Progress output (default: bars on stderr).

    Returns:
        The outcome; ``exit_code`` 0 when every gate passed, 1 otherwise.

    Raises:
        BadInputError: A problem with the inputs found at run time (exit 2): the run directory
            cannot be created, the teacher cannot be built, its checkpoint is missing, unsafe,
            truncated or does not fit. All are found before the run directory is touched.
        RunLocked: Another live run holds the run directory (exit 2).
        StageError: A stage failed (exit 3), including NaN/inf loss, CUDA out of memory and a
            full disk; finished stages stay cached for the next run.
    """
    from compress.report import evaluate_gates, write_reports

    cfg = loaded.config
    reporter = reporter or Reporter()
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / cfg.name
    t_start = time.perf_counter()
    # everything that can be bad input is checked before the run directory is touched
    _check_run_dir(run_dir)
    first_rerun = _rerun_index(loaded, rerun)
    torch.manual_seed(cfg.seed)
    data_env = loaded.data_env(cache_dir=run_dir / "data" / "cache")
    try:
        data = SOURCES.get(cfg.data.source)(cfg.data, data_env)
    except DataSourceError as e:
        raise DataError(f"{loaded.where(e.yaml_path)}: {e.detail}") from None
    teacher = _load_teacher(loaded, data)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(
            f"run directory {run_dir}: cannot create it ({e.strerror}); choose another --run-dir"
        ) from None
    with run_lock(run_dir):
        _remove_stale_temp_files(run_dir)
        data_env.flush_cache()  # tokenised data, held back until the run directory is ours
        atomic_write_text(run_dir / "pipeline.yaml", yaml.safe_dump(dump_config(cfg), sort_keys=False))
        split_hash = load_or_make_splits(
            data,
            run_dir / "data" / "splits.json",
            val_fraction=cfg.data.val_fraction,
            test_fraction=cfg.data.test_fraction,
            seed=cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed,
        )
        ck = cfg.teacher.checkpoint
        inputs = {
            "compress_version": __version__,
            "seed": cfg.seed,
            "teacher": cfg.teacher.model_dump(mode="json", exclude={"checkpoint"}),
            "teacher_checkpoint_sha256": sha256_file(ck) if ck else None,
            # split_seed only when set, so runs from before the key existed keep their cached stages
            "data": cfg.data.model_dump(
                mode="json", exclude={"split_seed"} if cfg.data.split_seed is None else None
            ),
            "data_sha256": data_fingerprint(data),
            "splits_sha256": split_hash,
        }
        key = sha256_json(inputs)
        manifest: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION,
            "name": cfg.name,
            "pipeline_file": str(loaded.path),
            "versions": {
                "compress": __version__,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "platform": platform.platform(),
            },
            "seed": cfg.seed,
            "inputs": inputs,
            "stages": [],
            "artifacts": {},
        }
        eval_bs = cfg.data.eval_batch_size
        tracker = open_tracker(cfg.tracking, run_dir, run_name=cfg.name, params=dump_config(cfg))  # tracking hook
        try:
            manifest["teacher"] = {"initial": _model_metrics(teacher, data, eval_bs)}
            model = copy.deepcopy(teacher)
            artifacts: dict[str, Artifact] = {}
            history: dict[str, dict[str, Any]] = {}
            atomic_write_json(run_dir / "manifest.json", manifest)
            for i, entry in enumerate(cfg.stages):
                check_interrupt()
                kind = entry.kind
                stage_cls = STAGES.get(kind)
                sid = f"{i + 1:02d}-{kind}"
                sdir = run_dir / "stages" / sid
                sdir.mkdir(parents=True, exist_ok=True)
                key = sha256_json({"prev": key, "kind": kind, "config": entry.config.model_dump(mode="json")})
                done_path = sdir / "result.json"
                t0 = time.perf_counter()
                record: dict[str, Any] | None = None
                stage_fresh = fresh or (first_rerun is not None and i >= first_rerun)
                if not stage_fresh and done_path.is_file():
                    try:
                        prev = read_json(done_path)
                    except (OSError, ValueError):
                        prev = None
                    if (
                        prev
                        and prev.get("key") == key
                        and all(_artifact_ok(run_dir, a) for a in prev.get("artifacts", []))
                        and all(
                            (sdir / f).is_file() and sha256_file(sdir / f) == h for f, h in prev.get("files", {}).items()
                        )
                    ):
                        record = prev
                if record is not None:
                    if "model.pt" in record["files"]:
                        model = load_model(sdir / "model.pt")
                    if "teacher.pt" in record["files"]:
                        teacher = load_model(sdir / "teacher.pt")
                    status = "cached"
                else:
                    done_path.unlink(missing_ok=True)
                    _claim_stage_dir(sdir, key, fresh=stage_fresh)
                    ctx = StageContext(
                        run_dir=run_dir,
                        stage_dir=sdir,
                        artifacts_dir=run_dir / "artifacts",
                        index=i,
                        yaml_path=f"stages[{i}].{kind}",
                        pipeline=cfg,
                        data=data,
                        teacher=teacher,
                        model=model,
                        artifacts=dict(artifacts),
                        history=dict(history),
                        targets=loaded.targets,
                        seed=cfg.seed * 1000 + i,
                        reporter=reporter,
                        load_data=lambda dcfg, at, _sdir=sdir: _load_stage_data(loaded, dcfg, at, _sdir, data_env),
                        load_model=lambda mcfg, at: _load_source_model(loaded, mcfg, at, data, cfg.data.source),
                    )
                    try:
                        result: StageResult = stage_cls().run(ctx, entry.config)
                    except StageError as e:
                        if e.stage:
                            raise
                        raise type(e)(str(e), stage=kind, yaml_path=ctx.yaml_path) from e  # e.g. NaN loss from fit
                    except BadInputError as e:
                        raise type(e)(f"stage '{kind}' ({ctx.yaml_path}): {e}") from e
                    except CompressError as e:
                        raise StageError(str(e), stage=kind, yaml_path=ctx.yaml_path) from e
                    except (KeyboardInterrupt, MemoryError):
                        raise
                    except torch.cuda.OutOfMemoryError as e:
                        raise StageError(
                            _oom_message(entry.config, ctx.yaml_path, cfg), stage=kind, yaml_path=ctx.yaml_path
                        ) from e
                    except OSError as e:
                        if e.errno in _DISK_FULL:
                            raise StageError(_disk_full_message(e), stage=kind, yaml_path=ctx.yaml_path) from e
                        raise StageError(f"{type(e).__name__}: {e}", stage=kind, yaml_path=ctx.yaml_path) from e
                    except Exception as e:
                        raise StageError(f"{type(e).__name__}: {e}", stage=kind, yaml_path=ctx.yaml_path) from e
                    files: dict[str, str] = {}
                    if result.model is not None:
                        model = result.model
                        save_model(model, sdir / "model.pt")
                        files["model.pt"] = sha256_file(sdir / "model.pt")
                    if result.teacher is not None:
                        teacher = result.teacher
                        teacher.eval()
                        save_model(teacher, sdir / "teacher.pt")
                        files["teacher.pt"] = sha256_file(sdir / "teacher.pt")
                    arts = []
                    for a in result.artifacts:
                        p = run_dir / a.path
                        arts.append({**a.to_dict(), "sha256": sha256_file(p), "size_bytes": p.stat().st_size})
                    metrics = dict(result.metrics)
                    if result.model is not None:
                        metrics["model"] = _model_metrics(model, data, eval_bs)
                    record = {
                        "key": key,
                        "kind": kind,
                        "config": entry.config.model_dump(mode="json"),
                        "metrics": metrics,
                        "artifacts": arts,
                        "files": files,
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                    atomic_write_json(done_path, record)
                    status = "ran"
                for a in record["artifacts"]:
                    artifacts[a["name"]] = Artifact.from_dict(a)
                    manifest["artifacts"][a["name"]] = {k: a[k] for k in ("path", "sha256", "size_bytes", "format", "precision")}
                history[sid] = record["metrics"]
                manifest["stages"].append(
                    {
                        "id": sid,
                        "kind": kind,
                        "status": status,
                        "key": key,
                        "seconds": record["seconds"],
                        "files": record["files"],
                        "metrics": record["metrics"],
                        "artifacts": [a["name"] for a in record["artifacts"]],
                    }
                )
                atomic_write_json(run_dir / "manifest.json", manifest)
                tracker.log_stage(sid, status, record["metrics"])  # tracking hook
                reporter.line(_summary_line(i, len(cfg.stages), sid, status, record))
            manifest["teacher"]["final"] = _model_metrics(teacher, data, eval_bs)
            gates = evaluate_gates(cfg.gates, manifest)
            manifest["gates"] = gates
            manifest["verdict"] = "pass" if all(g["passed"] for g in gates) else "fail"
            manifest["wall_seconds"] = round(time.perf_counter() - t_start, 2)
            atomic_write_json(run_dir / "manifest.json", manifest)
            write_reports(run_dir, manifest)
            tracker.log_gates(gates, manifest["verdict"], [run_dir / f for f in REPORT_FILES])  # tracking hook
            tracker.close()  # tracking hook
        except BaseException:
            tracker.close(status="FAILED")  # tracking hook: a failed or interrupted run is not left RUNNING
            raise
        exit_code = 0 if manifest["verdict"] == "pass" else 1
        return RunOutcome(run_dir=run_dir, exit_code=exit_code, gates=gates, manifest=manifest)


def _rerun_index(loaded: LoadedPipeline, rerun: str | None) -> int | None:
    """The index of the stage ``--rerun`` names (kind or id), or None; bad input names the choices."""
    if rerun is None:
        return None
    ids = [f"{i + 1:02d}-{e.kind}" for i, e in enumerate(loaded.config.stages)]
    by_id = [i for i, sid in enumerate(ids) if sid == rerun]
    by_kind = [i for i, e in enumerate(loaded.config.stages) if e.kind == rerun]
    if by_id:
        return by_id[0]
    if len(by_kind) == 1:
        return by_kind[0]
    where = f"{loaded.path}: --rerun {rerun}"
    if by_kind:
        raise BadInputError(
            f"{where}: the pipeline has {len(by_kind)} {rerun} stages; name one by its id: "
            + ", ".join(ids[i] for i in by_kind)
        )
    raise BadInputError(f"{where}: no such stage; give a kind or an id of this pipeline: {', '.join(ids)}")


def _claim_stage_dir(sdir: Path, key: str, *, fresh: bool) -> None:
    """Make ``sdir`` this stage key's: files left by another key (an upstream change, ``--fresh``) are removed.

    A stage's per-epoch checkpoint is only valid for the inputs it was written with; the training
    loop's own key covers the stage config, not the model entering the stage, so the runner marks
    the folder with the stage key (``stage.key``) and clears it when the key differs.
    """
    import shutil

    marker = sdir / "stage.key"
    old = marker.read_text().strip() if marker.is_file() else None
    if fresh or (old is not None and old != key) or (old is None and any(sdir.iterdir())):
        shutil.rmtree(sdir)
        sdir.mkdir(parents=True)
    if old != key or fresh:
        atomic_write_text(marker, key + "\n")


def _summary_line(i: int, n: int, sid: str, status: str, record: dict[str, Any]) -> str:
    m = record["metrics"].get("model", {})
    parts = [f"[{i + 1}/{n}] {sid:<12} {status:<6} {record['seconds']:7.1f}s"]
    if "val_accuracy" in m:
        parts.append(f"val acc {m['val_accuracy']:.4f}")
    if "params" in m:
        parts.append(f"params {m['params']:,}")
    if "macs" in m:
        parts.append(f"MACs {m['macs']:,}")
    if record["artifacts"]:
        parts.append("artifacts " + ", ".join(a["name"] for a in record["artifacts"]))
    return "  ".join(parts)


def python_info() -> str:
    """Interpreter line for reports."""
    return sys.version.split()[0]
