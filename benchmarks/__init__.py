"""mibench: causal measurement of modality interference in multimodal LLMs."""

__version__ = "0.1.0"
