"""Where `lm_kd` reads its teacher's log-probabilities when the teacher is not a local model.

A teacher source has `sparse(batch) -> (ids, values, extra)` in a top-k cache's layout
(`distill.llm.cache`), `mode`, `temperature`, `k` and `describe()`. Two kinds:

- a cache on disk (`scheme.args.teacher_cache`, from `distill lm-cache`): rows looked up by
  the batch's row index, so it serves the training data as it is;
- a server (`scheme.args.teacher_server`, `distill.llm.served`): scores whatever tokens
  the batch holds, so on-policy distillation (the student's own samples) works with it.

A local teacher is the third kind, read densely by the scheme itself. What each kind cannot
do is refused here, before training, with the fix.
"""

from __future__ import annotations

from typing import Any

from distill.core.errors import ConfigError


def open_source(a: Any, ctx: Any, vocab: int) -> Any:
    """The cache or server `lm_kd`'s args name (checked against the data), else None."""
    if a.teacher_cache and a.teacher_server:
        raise ConfigError(
            "scheme.args: give teacher_cache or teacher_server, not both (one teacher)"
        )
    if (a.teacher_cache or a.teacher_server) and a.divergence != "forward_kl":
        raise ConfigError(
            f"scheme.args.divergence is {a.divergence!r}, but a cache or server gives the "
            f"teacher's top-k log-probabilities, and its KD is the forward KL over those k "
            f"tokens and the tail; set divergence: forward_kl, or use a teacher section"
        )
    if a.teacher_cache:
        return _open_cache(a, ctx, vocab)
    if a.teacher_server:
        return _open_server(a, ctx, vocab)
    return None


def _open_cache(a: Any, ctx: Any, vocab: int) -> Any:
    from distill.llm.cache import TeacherCache

    if a.on_policy or a.sequence_level or a.hidden:
        raise ConfigError(
            "scheme.args.teacher_cache holds the teacher's outputs on the training data "
            "as it is; on_policy and sequence_level need a teacher that reads new text "
            "(a teacher section or teacher_server), hidden needs its hidden states: give a "
            "teacher section instead of the cache"
        )
    cache = TeacherCache.open(a.teacher_cache)
    train = ctx.data.train
    rows, length = train.ids.shape[0], train.ids.shape[1] - 1
    if (len(cache), cache.length) != (rows, length) or cache.vocab != vocab:
        raise ConfigError(
            f"scheme.args.teacher_cache: the cache holds {len(cache)} rows of "
            f"{cache.length} tokens over {cache.vocab} tokens, the training data "
            f"{rows} rows of {length} over {vocab}; rebuild it for this data with "
            f"distill lm-cache"
        )
    _check_fingerprint(cache, train, getattr(ctx.data, "tokenizer", None))
    if cache.temperature != a.temperature:
        raise ConfigError(
            f"scheme.args.temperature is {a.temperature} but the cache was built at "
            f"{cache.temperature}; use that, or rebuild the cache"
        )
    return cache


def _check_fingerprint(cache: Any, train: Any, tokenizer: Any) -> None:
    """Refuse a cache made from other text or with another tokenizer, even of one shape."""
    from distill.llm.cache_build import token_data_fingerprint, tokenizer_fingerprint

    made = cache.fingerprint
    now = {"data": token_data_fingerprint(train)}
    if tokenizer is not None:
        now["tokenizer"] = tokenizer_fingerprint(tokenizer)
    for what, value in now.items():
        if made.get(what) not in (None, value):
            raise ConfigError(
                f"scheme.args.teacher_cache: {str(cache.path)!r} was built on another "
                f"{'tokenizer' if what == 'tokenizer' else 'training set'} than this run's "
                f"(same shape, different {what} fingerprint); rebuild it with distill "
                f"lm-cache on this config"
            )


def _open_server(a: Any, ctx: Any, vocab: int) -> Any:
    from distill.llm.served import ServedTeacher

    if a.sequence_level or a.hidden:
        raise ConfigError(
            "scheme.args.teacher_server gives log-probabilities of text it is sent; "
            "sequence_level needs the teacher to write text and hidden its hidden states: "
            "give a teacher section for those"
        )
    if a.temperature != 1.0:
        raise ConfigError(
            f"scheme.args.temperature is {a.temperature}, but a server's top-k "
            f"log-probabilities are at temperature 1 and the tail cannot be re-tempered: "
            f"use temperature 1 with teacher_server"
        )
    return ServedTeacher(a.teacher_server, vocab, getattr(ctx.data, "tokenizer", None))


def describe(source: Any) -> tuple[str, str]:
    """(results key, line) saying where the run's teacher outputs came from."""
    if hasattr(source, "path"):  # a cache on disk
        return "teacher_cache", (
            f"{source.mode}-{source.k} logit cache {str(source.path)!r} (the teacher was not "
            f"run on the training data)"
        )
    return "teacher_source", source.describe()
