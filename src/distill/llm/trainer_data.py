"""The data of `DistillationTrainer`: text datasets tokenised (by one tokenizer, or by both
across tokenizers), each training row keeping its teacher (routing) and its number (a
teacher cache), and a padding collator when none is given."""

from __future__ import annotations

from typing import Any

from distill.llm.trainer_cache import with_row_numbers
from distill.llm.trainer_routing import route_rows, with_routes


def prepare_text(kwargs: dict[str, Any], max_length: int, cross: tuple = (None,)) -> dict[str, str]:
    """Untokenised datasets (text, prompt/completion, prompt alone, messages) tokenised with
    the `processing_class`, and a padding collator when none is given (see
    distill.llm.chat); with a `cross` tokenizer mode, by both models' tokenizers
    (`distill.llm.cross_trainer`). A dataset of other columns is left to the user's
    `data_collator`. Returns the shapes found, by dataset key."""
    from distill.llm.chat import PadCollator, shape_of, tokenize_dataset

    if cross[0] is not None:
        from distill.llm.cross_trainer import check_cross, prepare_cross_text

        check_cross(*cross)
        return prepare_cross_text(kwargs, cross[1], max_length)

    tokenizer = kwargs.get("processing_class")
    shapes: dict[str, str] = {}
    for key in ("train_dataset", "eval_dataset"):
        data = kwargs.get(key)
        if data is None or isinstance(data, dict):
            continue
        columns = list(getattr(data, "column_names", None) or (data[0].keys() if len(data) else []))
        try:
            shape = shape_of(columns)
        except ValueError:
            if kwargs.get("data_collator") is not None:
                continue  # the user's collator reads its own columns
            raise
        if shape is None:
            continue
        if tokenizer is None:
            raise ValueError(
                f"{key} holds text ({', '.join(columns)}); pass processing_class=<tokenizer> "
                f"to tokenise it"
            )
        shapes[key] = shape
        kwargs[key] = tokenize_dataset(data, tokenizer, max_length)
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = PadCollator(tokenizer)
    return shapes


def prepare_rows(
    kwargs: dict[str, Any], max_length: int, cross: tuple, teachers: Any, column: Any, cache: Any
) -> Any:
    """The datasets tokenised (`prepare_text`), each training row keeping its teacher (read
    before tokenising drops the column) and, when a cache is read, its number. Returns the
    training rows as tokenised, before those columns were added."""
    route = None
    if teachers is not None:
        kwargs["train_dataset"], route = route_rows(
            kwargs.get("train_dataset"), column, list(teachers)
        )
    shapes = prepare_text(kwargs, max_length, cross)
    _, _, _, lmbda, seq_kd = cross
    if shapes.get("train_dataset") == "prompt_only" and lmbda < 1.0 and not seq_kd:
        raise ValueError(
            "the training data holds prompts alone, which carry no tokens to learn until "
            "a model completes them: set lmbda=1.0 (on-policy: the student writes, the "
            "teacher scores) or seq_kd=True (the teacher writes)"
        )
    rows = kwargs.get("train_dataset")
    cached = cache is not None or any(
        isinstance(t, dict) and "cache" in t for t in (teachers or {}).values()
    )
    if cached:  # each row keeps its number through shuffling
        kwargs["train_dataset"] = with_row_numbers(rows)
    kwargs["train_dataset"] = with_routes(kwargs.get("train_dataset"), route)
    return rows
