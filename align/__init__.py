"""align: SFT then DPO for Mixtral-family mixture-of-experts models."""

__version__ = "0.1.0"
