"""Diffusion models and their distillation: a v-parameterised denoiser on a cosine schedule,
DDIM sampling, progressive distillation targets and sample-quality metrics."""
