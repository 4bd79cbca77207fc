"""Serving: chat completions for base, fine-tuned and checkpoint models."""
