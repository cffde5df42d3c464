"""Distillation losses (METHODS.md §2): plain functions on logits, features and attention signals.

Every function takes the student's tensor first and the teacher's second, detaches the
teacher side, and computes in float32 (safe under autocast). Attention signals are per
head, shaped ``(batch, heads, length, head_dim)`` for Q/K/V and ``(batch, heads, length,
length)`` for scores; ``key_mask`` is a ``(batch, length)`` bool tensor, ``True`` where
a token is real (``None``: no padding).

========================= ===================================== ==========================================
function                  paper                                 reference code
========================= ===================================== ==========================================
``kd_loss``               Hinton et al., arXiv 1503.02531       mdistiller ``distillers/KD.py``
``dkd_loss``              Zhao et al. (DKD), arXiv 2203.08679   mdistiller ``distillers/DKD.py``
``hidden_mse``            FitNets arXiv 1412.6550; TinyBERT     mdistiller ``FitNet.py``; TinyBERT
                          arXiv 1909.10351                      ``task_distill.py`` (rep loss)
``attention_score_mse``   TinyBERT, arXiv 1909.10351            TinyBERT ``task_distill.py`` (att loss)
``attention_kl``          MiniLM, arXiv 2002.10957              (self-attention distribution transfer)
``value_relation_kl``     MiniLM, arXiv 2002.10957              (value-relation transfer)
``relation_kl``           MiniLMv2, arXiv 2012.15828            bloomberg ``minilmv2/minilmv2.py``
``cosine_loss``           DistilBERT, arXiv 1910.01108          HF ``distillation/distiller.py``
========================= ===================================== ==========================================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

MASKED_LOGIT = -1.0e4
"""Added to the scores of padded keys (BERT's extended-mask value): exp() of it underflows to 0."""


# --- logits ----------------------------------------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T² · KL(softmax(z_T/T) ‖ softmax(z_S/T)), summed over classes, mean over the batch.

    The T² factor keeps the soft-target gradient magnitude comparable across temperatures
    (arXiv 1503.02531; mdistiller ``KD.py``). The teacher side is detached.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    p_t = F.softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
    return kl * (t * t)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """−Σ softmax(z_T) · log softmax(z_S), mean over the batch (TinyBERT / TI prediction loss, T = 1)."""
    p_t = F.softmax(teacher_logits.detach().float(), dim=-1)
    return -(p_t * F.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()


def dkd_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD's two parts ``(TCKD, NCKD)``, each T² · KL summed over classes, mean over the batch.

    TCKD is the KL between the binary distributions (target class, all other classes);
    NCKD the KL between the distributions over the non-target classes only (the target
    logit masked out). As mdistiller's ``dkd_loss`` (arXiv 2203.08679), but the binary
    log-probabilities come from log-sum-exp, so a confident teacher gives no ``log(0)``.
    """
    t = temperature
    zs = student_logits.float() / t
    zt = teacher_logits.detach().float() / t
    gt = F.one_hot(target.long(), zs.shape[-1]).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:
        total = torch.logsumexp(z, dim=-1)
        target_part = z.masked_fill(~gt, float("-inf")).logsumexp(-1)
        other_part = z.masked_fill(gt, float("-inf")).logsumexp(-1)
        return torch.stack([target_part - total, other_part - total], dim=-1)

    log_b_s, log_b_t = binary_log_probs(zs), binary_log_probs(zt)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True) * (t * t)
    # mdistiller subtracts 1000 from the target logit; -inf is the same distribution, exactly.
    log_q_s = F.log_softmax(zs.masked_fill(gt, float("-inf")), dim=-1)
    q_t = F.softmax(zt.masked_fill(gt, float("-inf")), dim=-1)
    nckd = F.kl_div(log_q_s.masked_fill(gt, 0.0), q_t, reduction="batchmean") * (t * t)
    return tckd, nckd


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """Decoupled KD: ``alpha · TCKD + beta · NCKD`` (``dkd_parts``), without the warm-up factor.

    The caller multiplies by ``min(epoch / warmup, 1)`` (epochs counted from 1, as in
    mdistiller's trainer) and adds CE separately.
    """
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup_factor(progress: int, warmup: int) -> float:
    """``min(progress / warmup, 1)``, ``progress`` counted from 1 (as mdistiller's epochs); 1 if no warmup."""
    return 1.0 if warmup <= 0 else min(progress / warmup, 1.0)


# --- hidden states ---------------------------------------------------------------------------------


def hidden_mse(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error between a (projected) student feature and the teacher's, mean over every entry.

    FitNets' hint loss (arXiv 1412.6550; mdistiller ``F.mse_loss(ConvReg(f_S), f_T)``) and
    TinyBERT's hidden-state/embedding loss (``MSE(H_S W_h, H_T)``). Padding is not masked,
    as in TinyBERT.
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"hidden_mse: student feature {tuple(student_feature.shape)} and teacher feature "
            f"{tuple(teacher_feature.shape)} differ; project the student side first"
        )
    return F.mse_loss(student_feature.float(), teacher_feature.detach().float())


def cosine_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """DistilBERT's cosine embedding loss ``1 − cos(h_S, h_T)``, mean over (non-padding) positions.

    ``(B, L, D)`` features compare per token, ``(B, C, H, W)`` per spatial position along
    the channels, ``(B, D)`` per example (arXiv 1910.01108; ``nn.CosineEmbeddingLoss`` with
    target 1 in ``distiller.py``, over the tokens the attention mask keeps).
    """
    s, t = student_hidden.float(), teacher_hidden.detach().float()
    if s.shape != t.shape:
        raise ValueError(f"cosine_loss: shapes differ: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
    if s.ndim == 4:
        s, t = s.flatten(2).transpose(1, 2), t.flatten(2).transpose(1, 2)
    per = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    if token_mask is not None and per.ndim == 2:
        m = token_mask.to(per.dtype)
        return (per * m).sum() / m.sum().clamp_min(1.0)
    return per.mean()


# --- attention signals -----------------------------------------------------------------------------


def attention_scores(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pre-softmax scores ``Q Kᵀ / √d_head`` per head, padded keys set to ``MASKED_LOGIT``.

    Args:
        q: Queries ``(B, H, L, d)``.
        k: Keys ``(B, H, L, d)``.
        key_mask: ``(B, L)``, ``True`` for real tokens.

    Returns:
        ``(B, H, L, L)`` scores in float32.
    """
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :].bool(), MASKED_LOGIT)
    return scores


def attention_score_mse(
    student_scores: torch.Tensor, teacher_scores: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """TinyBERT's attention loss: MSE of pre-softmax scores, masked entries zeroed, mean over heads/entries.

    TinyBERT (``task_distill.py``) zeroes every score ``<= -100`` (the masked keys, which
    carry the additive mask −10000) in both tensors, then takes ``MSELoss`` over the
    ``(B, H, L, L)`` tensor, i.e. ``(1/h) Σ_heads MSE(A_S, A_T)``. Here the padded keys are
    zeroed from ``key_mask`` directly (and so are scores at ``MASKED_LOGIT``), which is the
    same for real models.
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"attention_score_mse: scores {tuple(student_scores.shape)} and {tuple(teacher_scores.shape)} "
            "differ; TinyBERT attention transfer needs equal head counts"
        )
    s, t = student_scores.float(), teacher_scores.detach().float()
    drop = t <= MASKED_LOGIT
    if key_mask is not None:
        drop = drop | ~key_mask[:, None, None, :].bool()
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    return F.mse_loss(torch.where(drop, zero, s), torch.where(drop, zero, t))


def relation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(softmax(teacher) ‖ softmax(student)) over the last axis, mean over heads and (real) query rows.

    The shared core of MiniLM's attention-distribution and value-relation losses and of
    MiniLMv2's relation loss: inputs are ``(B, heads, L, L)`` logits (scores or scaled
    relations); each row is a distribution over keys. Padded keys get ``MASKED_LOGIT`` on
    both sides (probability 0); padded query rows are left out of the mean. For unpadded
    input this is the bloomberg MiniLMv2 normalisation: KL summed over keys, divided by
    heads·length, mean over the batch.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"relation_kl: student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
            "relations differ in shape (heads or length)"
        )
    s, t = student_logits.float(), teacher_logits.detach().float()
    if key_mask is not None:
        keys = ~key_mask[:, None, None, :].bool()
        s, t = s.masked_fill(keys, MASKED_LOGIT), t.masked_fill(keys, MASKED_LOGIT)
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    per_row = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, heads, L)
    if key_mask is None:
        return per_row.mean()
    rows = key_mask[:, None, :].to(per_row.dtype).expand_as(per_row)
    return (per_row * rows).sum() / rows.sum().clamp_min(1.0)


def attention_kl(
    student_scores: torch.Tensor, teacher_scores: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MiniLM's self-attention distribution transfer: per-head KL(A_T ‖ A_S), A = softmax(scores).

    Head counts must match (MiniLM, arXiv 2002.10957); ``relation_kl`` does the averaging.
    """
    return relation_kl(student_scores, teacher_scores, key_mask)


def scaled_relation(x: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ / √d`` per head for ``x`` of shape ``(B, heads, L, d)`` (float32)."""
    xf = x.float()
    return xf @ xf.transpose(-2, -1) / math.sqrt(x.shape[-1])


def value_relation_kl(
    student_v: torch.Tensor, teacher_v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MiniLM's value-relation transfer: per-head KL(softmax(V_T V_Tᵀ/√d_T) ‖ softmax(V_S V_Sᵀ/√d_S)).

    The head widths may differ (the relations are ``L × L``); head counts must match.
    """
    return relation_kl(scaled_relation(student_v), scaled_relation(teacher_v), key_mask)


def split_relation_heads(x: torch.Tensor, relation_heads: int) -> torch.Tensor:
    """Concatenate the attention heads of ``x`` ``(B, H, L, d)`` and re-split into ``relation_heads``.

    MiniLMv2 (arXiv 2012.15828): the ``H·d`` features of a token are cut into
    ``relation_heads`` equal parts, so student and teacher head counts may differ.

    Raises:
        ValueError: ``H·d`` is not a multiple of ``relation_heads``.
    """
    b, h, n, d = x.shape
    width = h * d
    if width % relation_heads:
        raise ValueError(
            f"relation_heads {relation_heads} does not divide the attention width {width} (= {h}×{d})"
        )
    merged = x.transpose(1, 2).reshape(b, n, width)
    return merged.reshape(b, n, relation_heads, width // relation_heads).transpose(1, 2)


def minilmv2_relation_kl(
    student_x: torch.Tensor,
    teacher_x: torch.Tensor,
    relation_heads: int,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One MiniLMv2 self-attention relation (Q-Q, K-K or V-V): KL(R_T ‖ R_S), R = softmax(X Xᵀ/√d_r).

    ``student_x``/``teacher_x`` are the per-head Q, K or V ``(B, H, L, d)`` of the chosen
    layers; both are re-split into ``relation_heads`` heads first (``split_relation_heads``),
    ``d_r`` is each side's own relation-head width. The teacher side is detached.
    """
    s = split_relation_heads(student_x, relation_heads)
    t = split_relation_heads(teacher_x.detach(), relation_heads)
    return relation_kl(scaled_relation(s), scaled_relation(t), key_mask)
