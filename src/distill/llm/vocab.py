"""Vocabularies of teacher and student: check, align, or bridge with a cross-tokenizer loss.

- Identical tokenizers: token-level divergences apply directly.
- The same tokenizer with a padded embedding matrix (vocab_size rounded up to a multiple of
  64, say): the extra rows never correspond to text; logits are cut to the tokenizer's size
  (`lm_kd` does this with the data's vocabulary).
- Different tokenizers: token i of one model is not token i of the other, so per-token
  divergences are meaningless. `check_tokenizers` raises and names the options: sequence-level
  KD (the student learns the teacher's text in its own tokens), black-box KD, or the
  cross-tokenizer losses below, which `lm_kd` runs with `cross_tokenizer: uld | dskd`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.losses.divergences import kl_rows


class VocabMismatchError(ConfigError):
    """Teacher and student tokenize text differently."""


def _vocab(tok) -> dict[str, int]:
    if hasattr(tok, "tok"):  # distill.llm.text.HFTokenizer
        return tok.tok.get_vocab()
    if hasattr(tok, "get_vocab"):  # a transformers tokenizer
        return tok.get_vocab()
    return {f"<byte {i}>": i for i in range(tok.vocab_size)}  # ByteTokenizer: ids are bytes


def check_tokenizers(student_tok, teacher_tok) -> str:
    """'identical' when both map every token string to the same id; else raise."""
    s, t = _vocab(student_tok), _vocab(teacher_tok)
    if s == t:
        return "identical"
    shared = set(s) & set(t)
    same_ids = sum(s[k] == t[k] for k in shared)
    raise VocabMismatchError(
        f"teacher and student tokenizers differ ({len(t)} vs {len(s)} tokens, {len(shared)} "
        f"shared strings, {same_ids} with the same id), so token-level divergences do not "
        f"apply. Options: sequence-level KD (scheme.args.sequence_level: the teacher writes "
        f"text the student learns in its own tokens); black-box KD from the teacher's text; "
        f"or a cross-tokenizer loss (scheme.args.cross_tokenizer: uld for universal logit "
        f"distillation, Boizard et al. 2024, or dskd for dual-space KD, Zhang et al. 2024)"
    )


def align_padded(
    student_logits: Tensor, teacher_logits: Tensor, vocab: int
) -> tuple[Tensor, Tensor]:
    """Both logits cut to the tokenizer's `vocab` (rows beyond it are padding)."""
    for name, z in (("student", student_logits), ("teacher", teacher_logits)):
        if z.shape[-1] < vocab:
            raise VocabMismatchError(
                f"the {name} predicts {z.shape[-1]} tokens, fewer than the tokenizer's {vocab}"
            )
    return student_logits[..., :vocab], teacher_logits[..., :vocab]


def _aligned_rows(s_mask: Tensor, t_mask: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per sequence, the supervised positions of each model, cut to the shorter count."""
    out = []
    for sm, tm in zip(s_mask, t_mask):
        si, ti = sm.nonzero().flatten(), tm.nonzero().flatten()
        n = min(len(si), len(ti))
        out.append((si[:n], ti[:n]))
    return out


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_mask: Tensor,
    teacher_mask: Tensor,
    *,
    temperature: float = 1.0,
) -> Tensor:
    """Universal logit distillation (Boizard et al. 2024): the Wasserstein-1 distance between
    the two next-token distributions when token identities are ignored — both probability
    vectors sorted in decreasing order (the shorter padded with zeros), then L1.

    Supervised positions are paired in order within each sequence (the i-th answer token of
    the student with the i-th of the teacher, the shorter count kept). Mean over pairs.
    """
    total, count = student_logits.new_zeros((), dtype=torch.float32), 0
    for b, (si, ti) in enumerate(_aligned_rows(student_mask, teacher_mask)):
        if len(si) == 0:
            continue
        total = total + uld_sum(student_logits[b, si], teacher_logits[b, ti], temperature)
        count += len(si)
    return total / max(count, 1)


def uld_sum(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Summed ULD of paired positions (P, V_s) and (P, V_t): the L1 distance between the two
    distributions sorted in decreasing order, the shorter padded with zeros."""
    p_s = F.softmax(student_logits.float() / temperature, -1)
    p_t = F.softmax(teacher_logits.detach().float() / temperature, -1)
    v = max(p_s.shape[-1], p_t.shape[-1])
    p_s = F.pad(p_s.sort(-1, descending=True).values, (0, v - p_s.shape[-1]))
    p_t = F.pad(p_t.sort(-1, descending=True).values, (0, v - p_t.shape[-1]))
    return (p_s - p_t).abs().sum()


class DualSpaceKD(nn.Module):
    """Dual-space KD with cross-model attention (Zhang et al. 2024, DSKD), in a compact form.

    Cross-model attention aligns the teacher's tokens to the student's: queries from the
    student's input embeddings, keys from the teacher's, giving each student position an
    attention-weighted teacher hidden state h~_t (teacher padding masked out).
    - Student space: h~_t projected to the student's width and read by the student's own
      head gives a teacher distribution over the student's vocabulary; the projection and
      attention learn to make it predict the label (cross-entropy), and the student learns
      KL(p_{t->s} || p_s) from it (detached).
    - Teacher space: the student's hidden state projected to the teacher's width and read by
      the teacher's head is matched to the teacher's own distribution at the aligned
      position, KL(p_t || p_{s->t}).
    Returns (student-space KL, teacher-space KL, alignment cross-entropy), each a mean over
    supervised student tokens.
    """

    def __init__(
        self, d_student: int, d_teacher: int, e_student: int, e_teacher: int, attn_dim: int = 64
    ):
        super().__init__()
        self.query = nn.Linear(e_student, attn_dim)
        self.key = nn.Linear(e_teacher, attn_dim)
        self.t_to_s = nn.Linear(d_teacher, d_student)
        self.s_to_t = nn.Linear(d_student, d_teacher)
        self.scale = attn_dim**-0.5

    def align(self, e_s: Tensor, e_t: Tensor, h_t: Tensor, t_valid: Tensor) -> Tensor:
        """(N, Ls, d_t): teacher hidden states attended for each student position."""
        scores = self.query(e_s.float()) @ self.key(e_t.float()).transpose(1, 2) * self.scale
        scores = scores.masked_fill(~t_valid.bool().unsqueeze(1), float("-inf"))
        return torch.softmax(scores, -1) @ h_t.float()

    def forward(
        self,
        h_s: Tensor,
        e_s: Tensor,
        head_s: Tensor,
        h_t: Tensor,
        e_t: Tensor,
        head_t: Tensor,
        t_valid: Tensor,
        targets: Tensor,
        *,
        temperature: float = 1.0,
    ):
        mask = targets >= 0
        h_t_al = self.align(e_s, e_t.detach(), h_t.detach(), t_valid)[mask]
        hs = h_s[mask].float()
        z_ts = self.t_to_s(h_t_al) @ head_s.detach().float().t()  # teacher in student space
        align_ce = F.cross_entropy(z_ts, targets[mask])
        log_s = F.log_softmax(h_s[mask].float() @ head_s.float().t() / temperature, -1)
        p_ts = F.softmax(z_ts.detach() / temperature, -1)
        kl_student = (p_ts * (p_ts.clamp_min(1e-12).log() - log_s)).sum(-1).mean()
        with torch.no_grad():
            log_t = F.log_softmax(h_t_al @ head_t.float().t() / temperature, -1)
        log_st = F.log_softmax(self.s_to_t(hs) @ head_t.detach().float().t() / temperature, -1)
        kl_teacher = kl_rows(log_t, log_st).mean()
        return kl_student, kl_teacher, align_ce
