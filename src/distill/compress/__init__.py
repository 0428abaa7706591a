"""Compression around distillation: pruning, low-rank factorisation, quantization-aware
training, student architecture search, ONNX export and the `distill compress` pipeline."""
