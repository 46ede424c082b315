"""Data for dmx-jax: the synthetic CXR benchmark, real-dataset adapters, tokenizers, TFDS builders, grain pipelines.

Never imports training code (dmx_jax.training / experiments).
"""
