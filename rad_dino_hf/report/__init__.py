"""LLaVA-style report generation: RAD-DINO encoder -> MLP projector -> causal language model."""
