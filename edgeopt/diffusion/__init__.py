"""Diffusion end to end: text-to-image and class-conditional pipelines, image fidelity, fine-tuning."""
