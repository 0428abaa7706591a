"""The DistilBERT recipe for masked-language-model encoders (Sanh et al. 2019).

`mlm_kd` masks 15 % of the real tokens (80 % [MASK], 10 % a random token, 10 % unchanged,
drawn with a generator seeded by (seed, step), so a resumed run masks the same tokens) and
trains the student with the triple loss: soft-target KD on the masked positions
(T^2 KL(p_t^T || p_s^T)), the masked-LM cross-entropy, and the cosine between the last
hidden states of student and teacher on every real token. Optionally the last layers'
self-attention distributions are matched (MiniLM, Wang et al. 2020: heads averaged, so the
two models may differ in depth and head count).

Students start from the teacher: `hf_masked_lm` with `init_from` (a save_pretrained folder,
or `minilm` for the encoder of the offline all-MiniLM-L6-v2 package) and `layers` keeps
that subset of layers (DistilBERT took every other one).

Self-attention relation transfer (MiniLM's value relation, Wang et al. 2020; MiniLMv2's
Q-Q, K-K and V-V relations, Wang et al. 2021) reads the query/key/value projections of one
student layer and one teacher layer through forward hooks and matches their relation
matrices (`distill.losses.minilm_relation_loss`); with `relation_heads` set, the two models
may differ in width, head count and depth.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.data import load_batch
from distill.losses import minilm_relation_loss
from distill.losses.response import kd_loss
from distill.schemes.base import SchemeBase, SchemeContext, parse_args
from distill.taps import Tap

# Names of the query/key/value projections inside one encoder layer, per model family.
_QKV_SUFFIXES = (
    ("query", "key", "value"),  # BERT, RoBERTa, MiniLM
    ("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ("q_proj", "k_proj", "v_proj"),  # most decoder-style and newer encoders
)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of an HF encoder (BERT-like or DistilBERT-like)."""
    base = getattr(model, "base_model", model)
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        try:
            found = base.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            return found
    raise ConfigError(
        f"{type(model).__name__}: found no list of encoder layers (looked for encoder.layer, "
        "transformer.layer, encoder.layers, layers); relation transfer needs a BERT-like model"
    )


def qkv_module_names(model: nn.Module, layer: int) -> dict[str, str]:
    """{'q': name, 'k': name, 'v': name}: full module names of layer `layer`'s projections."""
    blocks = encoder_layers(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ConfigError(f"relation layer {layer}: the model has {len(blocks)} layers")
    block = blocks[layer]
    prefix = next(n for n, m in model.named_modules() if m is block)
    inner = [n for n, _ in block.named_modules()]
    for suffixes in _QKV_SUFFIXES:
        found = [next((n for n in inner if n.split(".")[-1] == s), None) for s in suffixes]
        if all(found):
            return {k: f"{prefix}.{n}" for k, n in zip("qkv", found, strict=True)}
    raise ConfigError(
        f"{type(model).__name__} layer {layer}: no query/key/value projections named "
        f"{' / '.join('+'.join(s) for s in _QKV_SUFFIXES)}"
    )


def hf_masked_lm(
    input_shape: Sequence[int] = (),
    num_classes: int = 0,
    *,
    init_from: str | None = None,
    layers: list[int] | None = None,
    arch: str = "bert",
    **config: Any,
) -> nn.Module:
    """A masked LM: from a pretrained encoder folder (its weights; a fresh MLM head if the
    folder has none), optionally keeping only `layers`, or random-init from a config."""
    from distill.models.encoders import automodel, encoder_dir, share_config

    automodel()  # a clear error when transformers is missing
    from transformers import AutoConfig, AutoModelForMaskedLM

    if init_from is None:
        try:
            cfg = AutoConfig.for_model(arch, **config)
        except ValueError as e:
            raise ConfigError(f"hf_masked_lm: {e}") from None
        return AutoModelForMaskedLM.from_config(cfg)
    model = AutoModelForMaskedLM.from_pretrained(
        encoder_dir(init_from), local_files_only=True, use_safetensors=True
    )
    if layers is not None:
        encoder = model.base_model.encoder
        n = len(encoder.layer)
        if not layers or any(not 0 <= i < n for i in layers):
            raise ConfigError(f"hf_masked_lm: layers must be ids in 0..{n - 1}, got {layers}")
        encoder.layer = nn.ModuleList([copy.deepcopy(encoder.layer[i]) for i in layers])
        model.config.num_hidden_layers = len(layers)
        share_config(encoder.layer, model.config)
    return model


def mask_tokens(
    ids: Tensor,
    attention_mask: Tensor,
    *,
    mask_id: int,
    vocab: int,
    special: Tensor,
    prob: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """(inputs, labels): BERT masking of real, non-special tokens; labels -100 elsewhere."""
    real = attention_mask.bool() & ~torch.isin(ids, special)
    u = torch.rand(ids.shape, generator=generator)
    chosen = real & (u < prob)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    kind = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (kind < 0.8)] = mask_id
    swap = chosen & (kind >= 0.8) & (kind < 0.9)
    inputs[swap] = torch.randint(vocab, ids.shape, generator=generator)[swap]
    return inputs, labels


class MLMArgs(Strict):
    mask_prob: float = Field(0.15, gt=0, lt=1)
    temperature: float = Field(2.0, gt=0)
    kd_weight: float = Field(5.0, ge=0)  # DistilBERT's alpha_ce
    mlm_weight: float = Field(2.0, ge=0)  # alpha_mlm
    cosine_weight: float = Field(1.0, ge=0)  # alpha_cos
    attention_weight: float = Field(0.0, ge=0)  # MiniLM last-layer attention KL
    relation_weight: float = Field(0.0, ge=0)  # MiniLM(v2) self-attention relation transfer
    relations: list[Literal["qq", "kk", "vv"]] = Field(default_factory=lambda: ["vv"], min_length=1)
    relation_heads: int | None = Field(None, ge=1)  # default: the models' (equal) head count
    student_relation_layer: int = -1
    teacher_relation_layer: int = -1  # MiniLMv2 suggests an upper-middle layer of large models
    mask_token_id: int | None = None  # default: the data tokenizer's [MASK]


class MaskedLMDistillation(SchemeBase):
    """`mlm_kd`: the DistilBERT triple loss (see the module docstring)."""

    Args = MLMArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(MLMArgs, ctx.args, "mlm_kd")
        if ctx.teacher is None and (a.kd_weight or a.cosine_weight or a.attention_weight):
            raise ConfigError(
                "scheme mlm_kd needs a masked-LM teacher; without one, set kd_weight, "
                "cosine_weight and attention_weight to 0 (plain masked-LM training)"
            )
        tok = ctx.data.tokenizer
        self.mask_id = (
            a.mask_token_id if a.mask_token_id is not None else getattr(tok, "mask_token_id", None)
        )
        if self.mask_id is None:
            raise ConfigError("scheme.args.mask_token_id: the data has no tokenizer with [MASK]")
        special = getattr(tok, "all_special_ids", []) if tok is not None else []
        self.special = torch.tensor(sorted(set(special) | {self.mask_id}))
        self.vocab = ctx.student.config.vocab_size
        if ctx.teacher is not None and ctx.teacher.config.vocab_size != self.vocab:
            raise ConfigError(
                f"mlm_kd: teacher and student vocabularies differ ({ctx.teacher.config.vocab_size}"
                f" vs {self.vocab}); DistilBERT distils over one vocabulary"
            )
        self.teacher, self.seed = ctx.teacher, ctx.seed
        trained: dict[str, nn.Module] = {}
        teacher_cfg = (ctx.teacher or ctx.student).config
        d_s, d_t = ctx.student.config.hidden_size, teacher_cfg.hidden_size
        self.project = nn.Linear(d_s, d_t) if d_s != d_t else nn.Identity()
        trained["project"] = self.project
        if a.attention_weight > 0:  # attention probabilities need the eager kernels
            for model in (ctx.student, ctx.teacher):
                if model is not None:
                    model.set_attn_implementation("eager")
        self.taps: tuple[Tap, Tap] | None = None
        if a.relation_weight > 0 and ctx.teacher is not None:
            self.relation_heads = self._relation_heads(ctx.student, ctx.teacher)
            kinds = sorted({r[0] for r in a.relations})
            s_names = qkv_module_names(ctx.student, a.student_relation_layer)
            t_names = qkv_module_names(ctx.teacher, a.teacher_relation_layer)
            self.taps = (
                Tap(ctx.student, [s_names[k] for k in kinds]),
                Tap(ctx.teacher, [t_names[k] for k in kinds]),
            )
            self.tap_names = (s_names, t_names)
        frozen = [ctx.teacher] if ctx.teacher is not None else []
        super().__init__(ctx.student, ctx.objective, trained, frozen=frozen)

    def _relation_heads(self, student: nn.Module, teacher: nn.Module) -> int:
        if self.args.relation_heads is not None:
            heads = self.args.relation_heads
            for label, model in (("student", student), ("teacher", teacher)):
                if model.config.hidden_size % heads:
                    raise ConfigError(
                        f"scheme.args.relation_heads {heads} does not divide the {label}'s "
                        f"hidden size {model.config.hidden_size}"
                    )
            return heads
        h_s, h_t = student.config.num_attention_heads, teacher.config.num_attention_heads
        if h_s != h_t:
            raise ConfigError(
                f"mlm_kd relation transfer: student has {h_s} attention heads, teacher {h_t}; "
                "set scheme.args.relation_heads to a number dividing both hidden sizes (MiniLMv2)"
            )
        return h_s

    def _relation_loss(self, am: Tensor) -> Tensor:
        """Mean over the chosen relations of KL(R_t || R_s), read from the taps' last pass."""
        s_tap, t_tap = self.taps
        (s_names, t_names) = self.tap_names
        losses = []
        for rel in self.args.relations:
            kind = rel[0]
            x_s, x_t = s_tap.feats[s_names[kind]], t_tap.feats[t_names[kind]]
            losses.append(minilm_relation_loss(x_s, x_t, heads=self.relation_heads, mask=am))
        s_tap.clear()
        t_tap.clear()
        return torch.stack(losses).mean()

    def _masked(self, batch: dict[str, Tensor], seed: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(seed)
        ids, am = batch["input"].cpu(), batch["attention_mask"].cpu()
        inputs, labels = mask_tokens(
            ids,
            am,
            mask_id=self.mask_id,
            vocab=self.vocab,
            special=self.special,
            prob=self.args.mask_prob,
            generator=gen,
        )
        device = batch["input"].device
        return inputs.to(device), labels.to(device)

    @staticmethod
    def _forward(model: nn.Module, inputs: Tensor, am: Tensor, m: Tensor, attn: bool):
        """(logits at masked positions, last hidden states, attentions). BERT-style models
        (an encoder plus a `cls` head) apply the head to the masked positions only, which
        saves most of the vocabulary-sized work; others run whole."""
        head = getattr(model, "cls", None)
        if head is not None:
            out = model.base_model(input_ids=inputs, attention_mask=am, output_attentions=attn)
            return head(out.last_hidden_state[m]), out.last_hidden_state, out.attentions
        out = model(
            input_ids=inputs, attention_mask=am, output_hidden_states=True, output_attentions=attn
        )
        return out.logits[m], out.hidden_states[-1], out.attentions

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a = self.args
        inputs, labels = self._masked(batch, self.seed * 1_000_003 + step)
        am = batch["attention_mask"]
        want_attn = a.attention_weight > 0
        m = labels != -100
        z_s, h_s, att_s = self._forward(self.student, inputs, am, m, want_attn)
        zero = h_s.new_zeros((), dtype=torch.float32)
        mlm = F.cross_entropy(z_s.float(), labels[m]) if m.any() else zero
        if self.teacher is None:  # plain masked-LM training (e.g. a teacher's own head)
            return {"loss": a.mlm_weight * mlm, "mlm": mlm}
        with torch.no_grad():
            z_t, h_t, att_t = self._forward(self.teacher, inputs, am, m, want_attn)
        out: dict[str, Tensor] = {"mlm": mlm, "kd": zero}
        if m.any():
            out["kd"] = kd_loss(z_s, z_t, temperature=a.temperature)
        real = am.bool()
        hs = self.project(h_s[real].float())
        out["cosine"] = (1 - F.cosine_similarity(hs, h_t[real].float(), dim=-1)).mean()
        total = (
            a.kd_weight * out["kd"] + a.mlm_weight * out["mlm"] + a.cosine_weight * out["cosine"]
        )
        if want_attn:
            p_s = att_s[-1].float().mean(1)  # (N, L, L), heads averaged
            p_t = att_t[-1].float().mean(1)
            kl = (p_t * (p_t.clamp_min(1e-12).log() - p_s.clamp_min(1e-12).log())).sum(-1)
            out["attention"] = kl[real].mean()  # queries at real tokens
            total = total + a.attention_weight * out["attention"]
        if self.taps is not None:
            out["relation"] = self._relation_loss(am)
            total = total + a.relation_weight * out["relation"]
        return {"loss": total, **out}

    @torch.no_grad()
    def evaluate(self, dataset, *, batch_size: int, device) -> dict[str, float]:
        """Masked-token accuracy and NLL on `dataset`, with a fixed masking (seed 0)."""
        was = self.student.training
        self.student.eval()
        correct = count = 0
        nll = 0.0
        for start in range(0, len(dataset), 64):
            b = load_batch(dataset, torch.arange(start, min(start + 64, len(dataset))))
            b = {k: v.to(device) for k, v in b.items()}
            inputs, labels = self._masked(b, start)
            m = labels != -100
            if m.any():
                z = self._forward(self.student, inputs, b["attention_mask"], m, False)[0].float()
                nll += float(F.cross_entropy(z, labels[m], reduction="sum"))
                correct += int((z.argmax(-1) == labels[m]).sum())
                count += int(m.sum())
        self.student.train(was)
        return {"acc": correct / max(count, 1), "nll": nll / max(count, 1)}

    def test_metrics(self, dataset, *, batch_size: int, device="cpu") -> dict[str, Any]:
        student = self.evaluate(dataset, batch_size=batch_size, device=device)
        if self.teacher is None:
            return {"test_masked_acc": student["acc"], "test_masked_nll": student["nll"]}
        self.teacher.to(device)
        keep, self.student = self.student, self.teacher
        try:
            teacher = self.evaluate(dataset, batch_size=batch_size, device=device)
        finally:
            self.student = keep
        return {
            "test_masked_acc": student["acc"],
            "test_masked_nll": student["nll"],
            "teacher_test_masked_acc": teacher["acc"],
            "teacher_test_masked_nll": teacher["nll"],
            "student_params": sum(p.numel() for p in keep.parameters()),
            "teacher_params": sum(p.numel() for p in self.teacher.parameters()),
        }
