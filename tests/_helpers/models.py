"""Tiny models and data shared by tests (real architectures shrunk through their configs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from compress._utils.progress import Reporter
from compress.data import SOURCES, TaskData, load_or_make_splits
from compress.models import build_model

# A 2-layer BERT (hidden 32, 4 heads, FFN 64, vocab 100): transformers' real BertModel shrunk by its config.
TINY_BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 100,
    "max_position_embeddings": 32,
}


def tiny_bert(seed: int = 0, num_labels: int = 5, **config: object) -> torch.nn.Module:
    """``TINY_BERT`` (fields overridden by ``config``) as a compress ``hf`` model, seeded, in eval mode."""
    torch.manual_seed(seed)
    return build_model("hf", {"hf_config": {**TINY_BERT, **config}, "num_labels": num_labels}).eval()


_RELOAD_AND_PREDICT = (
    "import sys, torch\n"
    "from compress.models import load_model\n"
    "d = sys.argv[1]\n"
    "m = load_model(d + '/model.pt').eval()\n"
    "x = torch.load(d + '/x.pt', weights_only=True)\n"
    "with torch.no_grad():\n"
    "    torch.save(m(x), d + '/y.pt')\n"
)


def logits_in_fresh_process(model: torch.nn.Module, x: torch.Tensor, folder: Path) -> torch.Tensor:
    """Save ``model`` (spec + state dict) to ``folder``, reload it in a new Python process, return its logits on ``x``."""
    from compress.models import save_model

    save_model(model, folder / "model.pt")
    torch.save(x, folder / "x.pt")
    subprocess.run(
        [sys.executable, "-c", _RELOAD_AND_PREDICT, str(folder)], check=True, capture_output=True, timeout=120
    )
    return torch.load(folder / "y.pt", weights_only=True)


def tiny_vit(
    depth: int = 2, dim: int = 32, num_heads: int = 4, mlp_dim: int = 64, seed: int = 0
) -> torch.nn.Module:
    """A 2-block, 32-wide tiny-vit for 8x8 digits."""
    torch.manual_seed(seed)
    return build_model("tiny-vit", {"dim": dim, "depth": depth, "num_heads": num_heads, "mlp_dim": mlp_dim})


def digits(tmp_path: Path, seed: int = 0) -> TaskData:
    """The digits data set with a stored split under ``tmp_path``."""
    data = SOURCES.get("digits")()
    load_or_make_splits(data, tmp_path / "splits.json", val_fraction=0.15, test_fraction=0.15, seed=seed)
    return data


def stage_context(
    run_dir: Path,
    data: TaskData,
    model: torch.nn.Module,
    *,
    kind: str,
    index: int,
    teacher: torch.nn.Module | None = None,
    reporter=None,  # noqa: ANN001  (a compress Reporter; silent by default)
    seed: int = 1,
):  # noqa: ANN201  (compress.stages.StageContext)
    """A ``StageContext`` for running one stage by hand (no pipeline file, no runner)."""
    from types import SimpleNamespace

    from compress._utils.progress import SILENT
    from compress.stages import StageContext

    return StageContext(
        run_dir=run_dir,
        stage_dir=run_dir / "stages" / f"{index + 1:02d}-{kind}",
        artifacts_dir=run_dir / "artifacts",
        index=index,
        yaml_path=f"stages[{index}].{kind}",
        pipeline=SimpleNamespace(data=SimpleNamespace(batch_size=64, eval_batch_size=256)),  # type: ignore[arg-type]
        data=data,
        teacher=teacher if teacher is not None else model,
        model=model,
        artifacts={},
        history={},
        targets={},
        seed=seed,
        reporter=reporter if reporter is not None else SILENT,
    )


class Recorder(Reporter):
    """A silent progress reporter that keeps the summary lines a stage prints (``.lines``)."""

    def __init__(self) -> None:
        super().__init__(silent=True)
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)


def calibrated_qat(data: TaskData) -> torch.nn.Module:
    """A default-config QAT tiny-vit, calibrated on two training batches, in eval mode."""
    from compress.quant import QuantConfig, calibrate_, prepare_qat

    qat = prepare_qat(tiny_vit(), QuantConfig())
    calibrate_(qat, lambda m: [m(x) for _, (x, _) in zip(range(2), data.batches("train", 64), strict=False)])
    return qat.eval()
