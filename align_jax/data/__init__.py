"""Data: document sources, the tokenizer, and grain pipelines that make model batches."""

from align_jax.data.pipeline import to_global_batch
from align_jax.data.pretrain import (
    FIELDS,
    load_source,
    make_eval_dataset,
    make_eval_iterator,
    make_train_dataset,
    make_train_iterator,
)
from align_jax.data.sources import DataError, DocumentSource, expand_files
from align_jax.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "FIELDS",
    "DataError",
    "DocumentSource",
    "Tokenizer",
    "expand_files",
    "load_source",
    "make_eval_dataset",
    "make_eval_iterator",
    "make_train_dataset",
    "make_train_iterator",
    "to_global_batch",
    "train_tokenizer",
]
