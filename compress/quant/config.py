"""Quantization settings: the ``quant:`` mapping of a ``qat`` stage.

Weights are quantized per output channel (axis 0 of an ``nn.Linear`` weight
``[out, in]``), activations per tensor, both symmetric with zero point 0 on
the integer grid ``[-2^(b-1), 2^(b-1) - 1]`` ([-128, 127] for 8 bits), which
is what TensorRT's explicit quantization expects. Scales start from a
calibration pass (min-max: ``scale = amax / 127``, or a percentile of ``|x|``)
and are then learned with LSQ (Esser et al., arXiv 1902.08153) unless
``learn_scale`` is false.

Example:
    >>> cfg = QuantConfig.model_validate({"calibration": {"method": "percentile"}})
    >>> cfg.weights.bits, cfg.calibration.percentile
    (8, 99.99)

Ternary weights (``weights: {scheme: twn}``) follow TWN as used by TernaryBERT
and the Teacher Intervention code (``compress.quant._ternary``): values
``{-α, 0, +α}`` with threshold ``Δ = 0.7 · mean|W|`` and ``α`` the mean of
``|W|`` above ``Δ``, recomputed from the weights at every forward (no learned
scale), per tensor by default.

Per-layer settings go in ``overrides``, an ordered list of
``{pattern, weights, activations, quantize}``. Precedence for a quantizable
module with qualified name ``n``: (1) the first override whose ``pattern``
equals ``n`` exactly, else (2) the first override whose glob ``pattern``
matches ``n`` (``fnmatch``: ``*``, ``?``, ``[...]``), else (3) the defaults
(``weights``, ``activations``). An override's ``weights``/``activations``
replace the defaults as a whole: keys it leaves out take the
``WeightQuantConfig``/``ActivationQuantConfig`` defaults, not the stage-level
values. Example: ternary everywhere except the patch embedding and the
classifier, kept at 8 bits::

    quant:
      weights: {scheme: twn}
      overrides:
        - {pattern: patch_embed, weights: {bits: 8}}
        - {pattern: head, weights: {bits: 8}}

CNNs for ONNX Runtime CPU: quantizers sit at layer inputs, so the last
convolution of a residual block writes its output in float into the ``Add``
and ONNX Runtime cannot run it as an integer ``QLinearConv``.
``quantize_residual_conv_outputs`` gives each such convolution an output
quantizer (found from a ``torch.fx`` trace), calibrated by ``calibrate_``
and trained with the other scales, so the ``onnx-int8-u8`` file quantizes
exactly where the trained model did (issue 7; ``compress.export.qdq``).
Its default, ``auto``, turns it on for every CNN (two or more convolutions)
that torch.fx can trace (a CNN that cannot be traced keeps float residual
outputs, with a warning; a ViT's single patch-embedding conv is left alone);
``false`` keeps the earlier fake-quant model, whose INT8 CNN files ONNX
Runtime runs mostly in float (slower than FP32 on x86 CPUs: 0.81x on a
ResNet-18, docs/results/ort-cnn-int8).

7-, 4- and 2-bit settings use the same code (grids ``[-64, 63]``, ``[-8, 7]``,
``[-2, 1]``); they export as int8 Q/DQ holding the narrower codes, so the file
is not smaller than 8 bits (a packed INT4 export needs opset 21). 7-bit weights
are ONNX Runtime's ``reduce_range``: its u8×s8 integer kernels on x86 CPUs
without VNNI (AVX2 only) add pairs of products in int16, which saturates for
8-bit weights (255·128·2 > 32767) and silently changes results; with 7-bit
weights (255·64·2 ≤ 32767) the ``onnx-int8-u8`` artifact runs exactly there.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import Field, model_validator

from compress.config.base import CompressConfig

Bits = Literal[8, 7, 4, 2]


WeightScheme = Literal["symmetric", "twn"]


class WeightQuantConfig(CompressConfig):
    """How weights are fake-quantized (symmetric, zero point 0).

    ``scheme: twn`` (ternary) is canonicalised by a validator to ``bits: 2``,
    ``learn_scale: false`` and, unless given, ``per_channel: false`` (one α per
    tensor, as the TI/TernaryBERT code does for Linear layers; ``true`` gives
    one α and Δ per output row, the code's row-wise variant).
    """

    scheme: WeightScheme = Field(
        "symmetric",
        description="symmetric: uniform grid of 'bits' with an (LSQ) scale; "
        "twn: ternary {-a, 0, +a}, threshold 0.7*mean|W| (TernaryBERT/TI), no learned scale.",
    )
    bits: Bits = Field(
        8,
        description="Weight bit width; grid [-2^(b-1), 2^(b-1)-1]; "
        "7 = ORT reduce_range for x86 CPUs without VNNI.",
    )
    per_channel: bool = Field(
        True, description="One scale per output channel (axis 0 of [out, in]); false: one per tensor."
    )
    learn_scale: bool = Field(
        True, description="Learn the scales with LSQ; false keeps the calibrated scales fixed."
    )
    clip: float = Field(
        2.5,
        gt=0,
        description="twn only: weights are clamped to [-clip, clip] before ternarization "
        "(the TI code's clip_val); gradients are zero outside.",
    )

    @model_validator(mode="before")
    @classmethod
    def _canonical_twn(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("scheme") != "twn":
            return data
        if data.get("bits", 2) != 2:
            raise ValueError(
                f"weights.bits: got {data['bits']} with scheme 'twn'; ternary weights are 2-bit codes "
                "{-1, 0, 1}: drop 'bits' (or set bits: 2), or use scheme: symmetric for a "
                f"{data['bits']}-bit grid"
            )
        if data.get("learn_scale", False):
            raise ValueError(
                "weights.learn_scale: got true with scheme 'twn'; the ternary scale a is recomputed "
                "from the weights at every step (TWN), there is nothing to learn: drop learn_scale"
            )
        return {**data, "bits": 2, "learn_scale": False, "per_channel": data.get("per_channel", False)}


class ActivationQuantConfig(CompressConfig):
    """How the inputs of quantized layers are fake-quantized (per tensor, symmetric, zero point 0)."""

    bits: Bits = Field(8, description="Activation bit width; grid [-2^(b-1), 2^(b-1)-1].")
    learn_scale: bool = Field(
        True, description="Learn the scales with LSQ; false keeps the calibrated scales fixed."
    )


class CalibrationConfig(CompressConfig):
    """How the initial activation scales are computed (weights always use their per-channel max)."""

    method: Literal["minmax", "percentile", "mse"] = Field(
        "minmax",
        description="minmax: amax = max |x| over the batches; "
        "percentile: mean over batches of a percentile of |x|; "
        "mse: mean over batches of the clip that minimises the quantization MSE.",
    )
    percentile: float = Field(
        99.99, gt=50, le=100, description="Percentile of |x| used by method 'percentile'."
    )
    batches: int = Field(
        4, ge=1, le=10_000, description="Training batches run through the model to calibrate."
    )


class QuantOverrideConfig(CompressConfig):
    """Settings for the quantizable modules whose qualified name matches ``pattern``."""

    pattern: str = Field(
        ..., min_length=1, description="Exact module name (e.g. 'head') or fnmatch glob ('blocks.*.mlp.*')."
    )
    weights: WeightQuantConfig | None = Field(
        None, description="Weight settings for these modules (replaces the default as a whole); null: default"
    )
    activations: ActivationQuantConfig | None = Field(
        None, description="Input-quantizer settings for these modules (replaces the default); null: default."
    )
    quantize: bool = Field(True, description="false: leave these modules in floating point.")


class QuantConfig(CompressConfig):
    """What ``prepare_qat`` inserts and how the scales are initialised and trained."""

    weights: WeightQuantConfig = Field(default_factory=WeightQuantConfig, description="Weight quantization.")
    activations: ActivationQuantConfig = Field(
        default_factory=ActivationQuantConfig, description="Activation (layer input) quantization."
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Scale initialisation."
    )
    quantize_attention_matmuls: bool = Field(
        True, description="Also quantize both inputs of the attention matmuls (Q·Kᵀ and probs·V)."
    )
    quantize_convolutions: bool = Field(
        True, description="Quantize Conv2d layers (weights per output channel, inputs per tensor)."
    )
    fold_batchnorm: bool = Field(
        True,
        description="Fold every BatchNorm that directly follows a convolution into it before QAT "
        "(the deployed convolution's weights are then the ones quantized); CNNs only.",
    )
    quantize_residual_conv_outputs: bool | Literal["auto"] = Field(
        "auto",
        description="Also fake-quantize (per tensor, learned scale, like a layer input) the output of each "
        "Conv2d whose result goes only into a residual add (a ResNet block's last conv and its downsample "
        "conv), so that ONNX Runtime CPU runs those convolutions as integer QLinearConv in onnx-int8-u8 "
        "files (TensorRT's Q/DQ guidance also quantizes residual-add inputs). true: needs a "
        "torch.fx-traceable model (an error otherwise); auto (default): on for a model with two or more "
        "Conv2d that traces, off with a warning for one that does not, off for models with fewer "
        "convolutions (Transformers, a ViT's patch embedding); false: those convolutions stay float.",
    )
    overrides: list[QuantOverrideConfig] = Field(
        default_factory=list,
        description="Per-layer settings: exact name first, then the first matching glob, then the defaults.",
    )

    def override_for(self, name: str) -> QuantOverrideConfig | None:
        """The override that applies to module ``name``: exact match first, then the first glob match.

        Example:
            >>> cfg = QuantConfig.model_validate(
            ...     {"overrides": [{"pattern": "blocks.*", "quantize": False},
            ...                    {"pattern": "blocks.0.attn.q"}]}
            ... )
            >>> cfg.override_for("blocks.0.attn.q").pattern, cfg.override_for("blocks.1.attn.q").pattern
            ('blocks.0.attn.q', 'blocks.*')
        """
        for o in self.overrides:
            if o.pattern == name:
                return o
        for o in self.overrides:
            if fnmatch.fnmatchcase(name, o.pattern):
                return o
        return None

    def for_module(self, name: str) -> QuantConfig | None:
        """The effective settings of module ``name`` (``None``: leave it in floating point).

        The result has the override's ``weights``/``activations`` in place of the
        defaults and no ``overrides`` of its own.
        """
        o = self.override_for(name)
        if o is None:
            return self.model_copy(update={"overrides": []})
        if not o.quantize:
            return None
        return self.model_copy(
            update={
                "weights": o.weights if o.weights is not None else self.weights,
                "activations": o.activations if o.activations is not None else self.activations,
                "overrides": [],
            }
        )


InterventionMode = Literal["gradual", "output", "context", "map", "block_input", "none"]
"""``teacher_intervention.mode``: what step 1 replaces (see ``compress.quant.intervention``)."""


class InterventionLossesConfig(CompressConfig):
    """Weights of the loss used in both TI steps (the TI code sums the four distillation terms with weight 1).

    Terms: soft cross-entropy on logits (T = 1); hidden-state MSE over the
    embedding output and every block output; attention-score MSE (pre-softmax,
    masked entries zeroed); attention-sub-layer-output MSE (pre-LN: the
    residual stream ``x + attn(ln1(x))``); optional ground-truth CE. A weight
    of 0 drops the term. Score and sub-layer terms need an attention layout
    (``compress.quant.intervention.find_attention_layout``); without one they are 0.
    """

    logits: float = Field(1.0, ge=0, description="Soft cross-entropy to the FP model's logits (T = 1).")
    hidden: float = Field(
        1.0, ge=0, description="Sum over embedding output and block outputs of MSE to the FP model."
    )
    scores: float = Field(1.0, ge=0, description="Sum over blocks of the attention-score (pre-softmax) MSE.")
    attention_output: float = Field(
        1.0, ge=0, description="Sum over blocks of the MSE of the residual stream after attention (x + attn)."
    )
    ce: float = Field(0.0, ge=0, description="Ground-truth cross-entropy (off in the paper's code).")

    @model_validator(mode="after")
    def _some_term(self) -> InterventionLossesConfig:
        if not any((self.logits, self.hidden, self.scores, self.attention_output, self.ce)):
            raise ValueError(
                "teacher_intervention.losses: every weight is 0; give at least one term a weight > 0"
            )
        return self


class TeacherInterventionConfig(CompressConfig):
    """Two-step QAT with Teacher Intervention (Kim et al., EACL 2023; ``qat: teacher_intervention:``).

    Step 1 runs ``steps`` optimizer steps with the intervention ``mode``
    (``gradual``: output for steps ``< s/6``, context for ``< s/3``, map for the
    rest, as the paper's code); step 2 runs the remaining ``N - steps`` steps
    of plain KD-QAT with a fresh optimizer and schedule, ``N`` being the qat
    stage's epochs × optimizer steps per epoch, so the total equals the
    baseline's. ``mode: none`` runs all ``N`` steps without intervention but
    with the same loss: the TernaryBERT-style KD-QAT baseline.

    Example:
        >>> TeacherInterventionConfig.model_validate({"mode": "map", "steps": 60}).losses.scores
        1.0
    """

    mode: InterventionMode = Field(
        "gradual",
        description="gradual (O, C, then M), output (O), context (C), map (M), block_input (our extension, "
        "any model with 'blocks'), none (same loss, no intervention: the KD-QAT baseline).",
    )
    steps: int | None = Field(
        None, ge=0, description="Step-1 length s in optimizer steps; null: round(N/8) (N: the stage's total)."
    )
    eval_every_steps: int | None = Field(
        None, ge=1, description="Also evaluate on val every this many optimizer steps (metrics 'step_evals')."
    )
    losses: InterventionLossesConfig = Field(
        default_factory=InterventionLossesConfig, description="Loss weights, the same in both steps."
    )

    @model_validator(mode="after")
    def _none_has_no_step1(self) -> TeacherInterventionConfig:
        if self.mode == "none" and self.steps:
            raise ValueError(
                f"teacher_intervention.steps: got {self.steps} with mode 'none'; mode none has no "
                "intervention step: drop steps (or choose a mode such as gradual)"
            )
        return self

    def step1_steps(self, total_steps: int) -> int:
        """The resolved step-1 length ``s`` for a budget of ``total_steps`` optimizer steps."""
        if self.mode == "none":
            return 0
        if self.steps is not None:
            return self.steps
        return max(1, round(total_steps / 8))
