"""ONNX export, checked against PyTorch and timed with ONNX Runtime.

Float models export as they are. Fake-quantized models export in the QDQ form ONNX Runtime
runs with integer kernels: QuantizeLinear/DequantizeLinear pairs around each layer's input,
and weights stored as int8 initializers feeding a DequantizeLinear (so the file is about a
quarter of the float one). The exporter is PyTorch's TorchScript-based one (`dynamo=False`),
which maps fake-quantize ops to Q/DQ nodes.
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.compress.quant import export_mode, is_quantized
from distill.core.checkpoint import atomic_write_bytes
from distill.core.errors import ConfigError
from distill.taps import logits_of


def require_onnx():
    """onnx and onnxruntime, or a one-line error that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "ONNX export needs onnx and onnxruntime: pip install torch==2.13.0 "
            "'distill[deploy]' (or pip install onnx onnxruntime)"
        ) from None
    return onnx, onnxruntime


def fold_quantized_weights(model_proto) -> int:
    """Replace each QuantizeLinear of a constant weight by the int8 tensor it produces.
    Returns how many weights were folded. The graph's outputs do not change: the
    DequantizeLinear that followed now reads the int8 initializer."""
    from onnx import numpy_helper

    graph = model_proto.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    folded, keep = 0, []
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            w, scale = value(node.input[0]), value(node.input[1])
            zero = value(node.input[2]) if len(node.input) > 2 else None
            if w is not None and scale is not None and w.ndim >= 2:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * w.ndim
                shape[axis] = -1
                s = scale.reshape(shape) if scale.ndim else scale
                z = (
                    zero.reshape(shape).astype(np.int32)
                    if zero is not None and zero.ndim
                    else (int(zero) if zero is not None else 0)
                )
                dtype = zero.dtype if zero is not None else np.uint8
                info = np.iinfo(dtype)
                q = np.clip(np.rint(w / s) + z, info.min, info.max).astype(dtype)
                graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
                folded += 1
                continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    # float weights no longer read by any node are dropped from the file
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return folded


def export_onnx(
    model: nn.Module, input_shape: Sequence[int], path: str | Path, *, opset: int = 17
) -> dict[str, Any]:
    """Write `model` to `path` as ONNX (batch dimension dynamic), atomically."""
    onnx, _ = require_onnx()
    model = model.eval().cpu()
    example = torch.zeros(2, *input_shape)
    quantized = is_quantized(model)
    buf = io.BytesIO()
    params = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # fake-quant export needs constant scales
    try:
        with (
            export_mode(model) if quantized else _nullcontext(),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buf,
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
    finally:
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
    proto = onnx.load_from_string(buf.getvalue())
    folded = fold_quantized_weights(proto) if quantized else 0
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    atomic_write_bytes(path, data)
    return {"path": str(path), "bytes": len(data), "quantized": quantized, "int8_weights": folded}


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def session(path: str | Path, threads: int = 1):
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(path_or_session, inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    sess = session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    outs = []
    for i in range(0, len(inputs), batch_size):
        x = inputs[i : i + batch_size].float().numpy()
        outs.append(torch.from_numpy(sess.run(None, {"input": x})[0]))
    return torch.cat(outs)


@torch.no_grad()
def parity(model: nn.Module, path: str | Path, inputs: torch.Tensor) -> dict[str, float]:
    """How closely the ONNX Runtime model reproduces PyTorch on `inputs`: the largest
    absolute logit difference, it relative to the logits' range, and top-1 agreement."""
    model = model.eval().cpu()
    chunks = [inputs[i : i + 512].float() for i in range(0, len(inputs), 512)]
    ref = torch.cat([logits_of(model(x)) for x in chunks])
    got = onnx_logits(path, inputs)
    diff = (got - ref).abs().max().item()
    return {
        "max_abs_diff": diff,
        "rel_diff": diff / max(ref.abs().max().item(), 1e-12),
        "top1_agreement": (got.argmax(1) == ref.argmax(1)).float().mean().item(),
    }


def onnx_latency_ms(
    path: str | Path,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    warmup: int = 20,
    repeats: int = 200,
    threads: int = 1,
) -> dict[str, float]:
    """ONNX Runtime per-call CPU latency (p50, p95 in ms), as `profile.latency_ms` times PyTorch."""
    sess = session(path, threads)
    x = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)
    feed = {"input": x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}
