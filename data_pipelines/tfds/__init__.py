"""TFDS builders (array_record file format, no TensorFlow) and the Example <-> record conversion.

Importing this package registers the `dmx_synthetic` and `dmx_adapter` builders with tfds.
"""

from data_pipelines.tfds.builders import (
    DmxAdapter,
    DmxAdapterConfig,
    DmxSynthetic,
    DmxSyntheticConfig,
    adapter_config,
    build,
    synthetic_config,
)
from data_pipelines.tfds.records import (
    decode_meta,
    encode_meta,
    encode_png,
    example_to_record,
    features,
    record_to_example,
)
