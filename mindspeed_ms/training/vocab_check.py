"""Token ids of the preprocessed datasets against the model's vocabulary, before compilation.

A token id >= text_decoder.vocab_size indexes past the embedding table; on CPU MindSpore reports it
as a Gather error deep inside the compiled step. The largest id of each token column is found with
Arrow's own kernels over the cached table (no Python loop over samples). Streaming datasets are not
read ahead; their ids are checked by nothing earlier than the step.
"""
from __future__ import annotations

_TOKEN_COLUMNS = ("input_ids", "rejected_input_ids")


def _max_id(rows):
    import pyarrow.compute as pc
    table = getattr(getattr(rows, "data", None), "table", None)
    if table is None:
        return None, None
    best, column = None, None
    for name in _TOKEN_COLUMNS:
        if name not in table.column_names or table.num_rows == 0:
            continue
        m = pc.max(pc.list_flatten(table.column(name))).as_py()
        if m is not None and (best is None or m > best):
            best, column = m, name
    return best, column


def check_token_ids(datasets, vocab_size: int, mm_data: str, mm_model: str):
    """Raise ValueError naming the files when a token id of `datasets` (train, val) is >= vocab_size."""
    for what, ds in zip(("training", "validation"), datasets):
        rows = getattr(ds, "rows", None)
        if ds is None or rows is None or callable(rows):
            continue
        top, column = _max_id(rows)
        if top is not None and top >= vocab_size:
            raise ValueError(f"--mm-data {mm_data}: the {what} set holds token id {top} ({column}), but "
                             f"text_decoder.vocab_size in --mm-model {mm_model} is {vocab_size}: the tokenizer "
                             f"(preprocess_parameters.model_name_or_path) does not belong to this model, or "
                             f"vocab_size is wrong; use the checkpoint's vocab_size (or its tokenizer)")
