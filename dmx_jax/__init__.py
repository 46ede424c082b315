"""dmx-jax: DeepMedix-R1 (grounded chest X-ray reasoning) in JAX/Flax.

Import flow: experiments -> training/evaluation -> sampling, rewards, sharding -> model, processing.
Nothing here imports torch, transformers or experiments.
"""
__version__ = "0.1.0"
