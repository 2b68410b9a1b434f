"""rsgrpo: risk-sensitive RL for LLM exploration."""
__version__ = "0.2.0"
