"""LoRA-NLG: a faithful, fast reproduction of the GPT-2 experiments of the LoRA paper."""

__version__ = "0.1.0"
