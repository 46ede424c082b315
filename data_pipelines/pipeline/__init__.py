"""Grain pipelines that feed static-shape batches: encode to (seq_len, patch_budget) buckets, batch per bucket.

Imports flow downward only: this package uses dmx_jax.model / dmx_jax.processing, never training code.
"""

from data_pipelines.pipeline.batching import (
    BucketBatchIterator,
    BucketBatchIterDataset,
    Encoded,
    collate,
    stack_rows,
    trim_right_padding,
)
from data_pipelines.pipeline.dataset import EncodeToBucket, as_example, make_dataset
from data_pipelines.pipeline.encode import (
    DoesNotFit,
    EncodingConfig,
    RowEncoder,
    check_buckets,
    encode_example,
    encode_to_bucket,
    image_array,
    measure,
)
from data_pipelines.pipeline.prompt import prompt_batch
