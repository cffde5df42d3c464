"""Input augmentation for distillation on token ids: KD on perturbed inputs (TinyBERT, arXiv 1909.10351).

A student distilled only on the task's sentences sees the teacher's function at those few points.
``augment:`` perturbs part of every training batch (some content tokens become the tokenizer's mask
token or a random vocabulary token), and the whole objective, teacher included, runs on the perturbed
batch: the teacher's soft labels and features describe the input the student actually sees, so the
student learns the teacher's answers near the data as well as on it. Labels are kept; with a large
``ce`` weight the label term then trains on perturbed text too, so KD-heavy losses suit it best.

Settings (the ``augment:`` mapping of a ``distill`` stage, or of a ``prune`` stage's ``recover:``)::

    augment:
      examples: 0.5     # share of each training batch that is perturbed
      mask: 0.15        # per content token: becomes the mask token ([MASK])
      replace: 0.0      # per content token: becomes a random non-special vocabulary token

Content tokens are those that are neither padding nor one of the tokenizer's special tokens
(``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]``, ``[MASK]``...); those are never changed, so sequence
length, padding and the attention mask stay as they were. Evaluation is never perturbed: the
objective perturbs only while the model trains with gradients on.

Pieces: ``TokenAugmentConfig`` (the YAML), ``TokenAugmenter`` (the perturbation, seeded, on a CPU
generator so results do not depend on the device), ``augmenter_for`` (an augmenter for a data set's
tokenizer) and ``AugmentedObjective`` (wraps a ``loss_fn(model, x, y)`` module such as
``DistillObjective``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from compress.config.base import CompressConfig
from compress.distill.layouts import unwrap
from compress.errors import ConfigError

_MIX = 1_000_003
"""Prime that mixes seed, stream and step into one generator seed."""


class TokenAugmentConfig(CompressConfig):
    """Perturb part of each training batch's token ids; the teacher sees the same perturbed input."""

    examples: float = Field(
        0.5, gt=0, le=1, description="Share of each training batch's examples that are perturbed: (0, 1]."
    )
    mask: float = Field(
        0.15, ge=0, lt=1, description="Probability that a content token becomes the tokenizer's mask token."
    )
    replace: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Probability that a content token becomes a uniformly random non-special vocabulary id.",
    )

    @model_validator(mode="after")
    def _some_perturbation(self) -> TokenAugmentConfig:
        total = self.mask + self.replace
        if total <= 0:
            raise ValueError(
                "augment.mask and augment.replace are both 0, so nothing would change; "
                "set mask (e.g. 0.15) or replace, or remove augment"
            )
        if total > 1:
            raise ValueError(
                f"augment.mask + augment.replace = {self.mask} + {self.replace} = {total:g} > 1; "
                "they are shares of the same tokens, so their sum must be at most 1"
            )
        return self


class TokenAugmenter:
    """Masks or replaces content tokens of a random share of a batch's examples.

    Per call: ``examples · B`` rows are chosen (the fraction rounded up or down at random, so the
    mean share is exact); in each chosen row every content token independently becomes
    ``mask_id`` with probability ``mask``, a token drawn uniformly from the non-special ids
    ``0..vocab_size-1`` with probability ``replace``, or stays. Random numbers come from a CPU
    ``torch.Generator`` seeded with ``seed``, so a seed and the sequence of calls (and ``reseed``
    calls) fix the result on any device.

    Args:
        cfg: Shares and probabilities.
        pad_id: The padding id (never changed).
        mask_id: The mask token's id; ``None`` allowed when ``cfg.mask`` is 0.
        special_ids: Ids never changed and never drawn as replacements (CLS, SEP, UNK, MASK...).
        vocab_size: Replacements are drawn from ``0..vocab_size-1`` less ``special_ids`` and ``pad_id``.
        seed: Seed of the generator.

    Raises:
        ValueError: ``mask > 0`` without ``mask_id``, or no id left to replace with.

    Example:
        >>> aug = TokenAugmenter(TokenAugmentConfig(), pad_id=0, mask_id=103, special_ids=[101, 102, 103],
        ...                      vocab_size=30522, seed=0)  # doctest: +SKIP
        >>> x_aug = aug(x)  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: TokenAugmentConfig,
        *,
        pad_id: int,
        mask_id: int | None,
        special_ids: Iterable[int],
        vocab_size: int,
        seed: int,
    ) -> None:
        if cfg.mask > 0 and mask_id is None:
            raise ValueError("augment.mask > 0 needs a mask token id; set mask: 0 and use replace")
        self.cfg = cfg
        self.pad_id = int(pad_id)
        self.mask_id = None if mask_id is None else int(mask_id)
        self.special_ids = sorted({int(i) for i in special_ids} | {self.pad_id})
        self.vocab_size = int(vocab_size)
        self.seed = int(seed)
        self._special = torch.tensor(self.special_ids, dtype=torch.long)
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        keep[self._special[self._special < self.vocab_size]] = False
        self._pool = torch.arange(self.vocab_size)[keep]
        if cfg.replace > 0 and len(self._pool) == 0:
            raise ValueError(f"augment.replace > 0, but all {self.vocab_size} vocabulary ids are special")
        self._gen = torch.Generator(device="cpu")
        self.reseed(0)

    def reseed(self, step: int, *, stream: int = 0) -> None:
        """Restart the generator at a seed made of ``seed``, ``stream`` and ``step``.

        ``fit`` calls it (through ``before_step``) before each optimizer step, so a run resumed from a
        checkpoint perturbs its later batches exactly as an uninterrupted run; ``stream`` separates
        several trainings of one stage (prune's recovery after each step).
        """
        self._gen.manual_seed(((self.seed * _MIX + stream) * _MIX + int(step)) % 2**63)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A perturbed copy of the token ids ``x`` (B, L); ``x`` itself is not modified.

        Raises:
            ValueError: ``x`` is not a 2-D integer tensor.
        """
        if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(
                f"token augmentation needs (batch, length) integer token ids, got {tuple(x.shape)} {x.dtype}"
            )
        b, length = x.shape
        g, cfg = self._gen, self.cfg
        # Every call draws the same amounts in the same order, so the stream depends only on the calls.
        share = cfg.examples * b
        k = int(share) + int(torch.rand((), generator=g).item() < share - int(share))
        rows = torch.zeros(b, dtype=torch.bool)
        rows[torch.randperm(b, generator=g)[:k]] = True
        u = torch.rand((b, length), generator=g)
        to_mask = rows[:, None] & (u < cfg.mask)
        to_replace = rows[:, None] & (u >= cfg.mask) & (u < cfg.mask + cfg.replace)
        out = x.clone()
        content = (x != self.pad_id) & ~torch.isin(x, self._special.to(x.device))
        if cfg.mask > 0:
            assert self.mask_id is not None  # checked in __init__
            out[to_mask.to(x.device) & content] = self.mask_id
        if cfg.replace > 0:
            new = self._pool[torch.randint(len(self._pool), (b, length), generator=g)]
            out = torch.where(to_replace.to(x.device) & content, new.to(device=x.device, dtype=x.dtype), out)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON summary for stage metrics: the settings, the mask id and the replacement pool size."""
        return {
            **self.cfg.model_dump(mode="json"),
            "mask_token_id": self.mask_id,
            "special_ids": self.special_ids,
            "replace_pool": len(self._pool) if self.cfg.replace > 0 else 0,
            "seed": self.seed,
        }


def augment_data_problem(data: Any) -> str | None:
    """Why ``augment`` cannot apply to a data config (``DataConfig.input_kind``), or None when it can or
    only loading the data can tell (a ``factory`` source); for checks before any work."""
    kind = getattr(data, "input_kind", None)
    if kind is None or kind == "token_ids":
        return None
    return (
        f"augment applies to token-id (text) data only; data source '{getattr(data, 'source', '?')}' gives "
        f"{kind} inputs: remove augment"
    )


def augmenter_for(cfg: TokenAugmentConfig, data: Any, *, seed: int, yaml_path: str) -> TokenAugmenter:
    """A ``TokenAugmenter`` for the tokenizer of ``data`` (a ``TaskData`` from a text source).

    Reads ``data.preprocess``: ``input`` must be ``token_ids``; ``tokenizer`` (the folder) gives the
    mask token and the special ids, ``pad_token_id`` and ``vocab_size`` the rest.

    Args:
        cfg: The ``augment:`` settings.
        data: The stage's training data.
        seed: Seed of the augmenter (the stage seed).
        yaml_path: Where ``augment`` sits in the YAML (``stages[1].distill.augment``), for messages.

    Returns:
        The augmenter.

    Raises:
        ConfigError: The data are not token ids, or ``mask > 0`` and the tokenizer has no mask token.
        DataSourceError: The tokenizer folder cannot be loaded.
        MissingDependency: transformers is not installed.
    """
    pre = getattr(data, "preprocess", None) or {}
    if pre.get("input") != "token_ids":
        raise ConfigError(
            f"{yaml_path}: augment applies to token-id (text) data only; this stage's data "
            f"'{getattr(data, 'name', '?')}' has inputs of kind '{pre.get('input', 'unknown')}'; "
            f"remove {yaml_path}"
        )
    if not pre.get("tokenizer"):
        raise ConfigError(
            f"{yaml_path}: the data do not record their tokenizer folder (preprocess.tokenizer), which "
            f"augment reads the mask and special tokens from; remove {yaml_path}"
        )
    from compress.data._text import load_tokenizer

    tok = load_tokenizer(Path(pre["tokenizer"]))
    mask_id = tok.mask_token_id
    if cfg.mask > 0 and mask_id is None:
        raise ConfigError(
            f"{yaml_path}.mask: {cfg.mask}, but the tokenizer in {pre['tokenizer']} has no mask token; "
            f"set {yaml_path}.mask: 0 and use {yaml_path}.replace (random vocabulary tokens) instead"
        )
    pad_id = int(pre.get("pad_token_id", tok.pad_token_id))
    vocab = int(pre.get("vocab_size", len(tok)))
    return TokenAugmenter(
        cfg, pad_id=pad_id, mask_id=mask_id, special_ids=tok.all_special_ids, vocab_size=vocab, seed=seed
    )


class AugmentedObjective(nn.Module):
    """``loss_fn(model, x, y)`` on a perturbed ``x`` while training: wraps an objective and an augmenter.

    While ``model`` is in training mode and gradients are on, ``x`` goes through the augmenter
    before the wrapped objective sees it, so the teacher inside the objective and the student see
    the same perturbed batch. In eval mode or under ``torch.no_grad()`` (``fit``'s evaluation) ``x``
    passes unchanged. The objective is a submodule: its trainable projections are among this
    module's parameters (``fit`` trains and checkpoints them under ``objective.``).

    Args:
        objective: The loss module (e.g. ``DistillObjective``).
        augmenter: The perturbation.

    Example:
        >>> loss_fn = AugmentedObjective(DistillObjective(teacher, losses), augmenter)  # doctest: +SKIP
        >>> fit(student, loss_fn, data, train, before_step=loss_fn.set_step, ...)  # doctest: +SKIP
    """

    def __init__(self, objective: nn.Module, augmenter: TokenAugmenter) -> None:
        super().__init__()
        self.objective = objective
        self.augmenter = augmenter
        self.perturbed_batches = 0

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
        """The wrapped objective's result on the perturbed ``x`` (training) or on ``x`` (otherwise)."""
        if unwrap(model).training and torch.is_grad_enabled():
            x = self.augmenter(x)
            self.perturbed_batches += 1
        return self.objective(model, x, y)

    def set_step(self, step: int) -> None:
        """``fit``'s ``before_step`` hook: reseed the augmenter for ``step`` and pass it to the objective."""
        self.augmenter.reseed(step)
        inner = getattr(self.objective, "set_step", None)
        if callable(inner):
            inner(step)

    def describe(self) -> dict[str, Any]:
        """The wrapped objective's summary plus ``augment``: settings and batches perturbed so far."""
        inner = getattr(self.objective, "describe", None)
        out = dict(inner()) if callable(inner) else {}
        out["augment"] = {**self.augmenter.describe(), "perturbed_batches": self.perturbed_batches}
        return out
