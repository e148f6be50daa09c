"""Static int8 for the compiled runtimes, calibrated on request samples; each runtime's table entry
names its function here (handlers/runtimes.py: `int8_static`).

    aoti   PyTorch's pt2e path: torch.export, then torchao's prepare_pt2e with the X86 Inductor
           quantizer, calibration, convert_pt2e, and AOTInductor compiles the int8 graph (oneDNN's
           VNNI/AMX int8 kernels, fused with their neighbours)
    onnx   ONNX Runtime's static QDQ quantization of the fp32 ONNX graph (per-channel int8
           weights, uint8 activations), calibrated with the same samples

Both measured on ResNet-18 here (batch 8, one thread): about 4x fp32 eager each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from handlers.spec import ModelSpec

__all__ = ["aoti_static", "onnx_static", "separate_module_calls"]

Batch = list[Tensor]  # one calibration batch, the artifact's inputs by position


def aoti_static(spec: ModelSpec, wrapper: nn.Module, example: list[Tensor], dynamic_shapes: tuple,
                calibration: list[Batch], path: Path, export: Callable) -> None:
    """The wrapper quantized with pt2e (calibrated on `calibration`), compiled by `export` (the
    AOTInductor exporter) to `path`."""
    _quiet_torchao_import()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    graph = torch.export.export(wrapper, tuple(example), dynamic_shapes=dynamic_shapes).module()
    separate_module_calls(graph)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(*batch)
    converted = convert_pt2e(prepared)
    # the converted graph takes its inputs as separate arguments: its shapes go by position
    program = torch.export.export(converted, tuple(example),
                                  dynamic_shapes=tuple(dynamic_shapes["inputs"]))
    export(spec, program, example, path)


def onnx_static(spec: ModelSpec, wrapper: nn.Module, example: list[Tensor], dynamic_shapes: tuple,
                calibration: list[Batch], path: Path, export: Callable) -> None:
    """The fp32 ONNX graph (written by `export`, the ONNX exporter), quantized by ONNX Runtime
    (static QDQ, calibrated on `calibration`) in place."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    program = torch.export.export(wrapper, tuple(example), dynamic_shapes=dynamic_shapes)
    fp32, prepared = path.with_suffix(".fp32.onnx"), path.with_suffix(".pre.onnx")
    export(spec, program, example, fp32)
    quant_pre_process(str(fp32), str(prepared))
    names = [i.name for i in spec.inputs]

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{n: t.numpy() for n, t in zip(names, batch)}
                                 for batch in calibration])

        def get_next(self):
            return next(self.batches, None)

    # 7-bit weights: an AVX2 CPU without VNNI adds u8 x s8 pairs in int16 (vpmaddubsw), which
    # 8-bit weights saturate (digits CNN logits off by 1.4 on an EPYC Milan); with 7 bits every
    # sum fits, so the artifact answers alike on AVX2, VNNI and AMX hosts and its golden check holds
    quantize_static(str(prepared), str(path), Samples(), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    fp32.unlink()
    prepared.unlink()


def _quiet_torchao_import() -> None:
    """Import torchao without its warnings about its CUDA-only kernels (mxfp8, CUTLASS), which a
    CPU build of torch cannot load and the X86 path does not use, and about an enum it registers
    the way torch 2.13 deprecates."""
    import logging

    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)


def separate_module_calls(graph: torch.fx.GraphModule) -> None:
    """Give each call of a module that forward() calls twice its own source partition.

    torch.export (non-strict, torch 2.13) records no `source_fn_stack`, so the quantizer groups
    nodes by the innermost module in `nn_module_stack`: torchvision's ResNet block calls one
    `self.relu` twice, its two calls land in one partition, and the X86 quantizer stops on
    "Input partition has more than one output node". Each call is one node here."""
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        stack = dict(stack)
        key, (fqn, kind) = stack.popitem()
        stack[f"{key}@{node.name}"] = (f"{fqn}@{node.name}", kind)
        node.meta["nn_module_stack"] = stack
