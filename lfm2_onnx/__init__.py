"""lfm2_onnx: ONNX exports of LiquidAI LFM2 models and a fast onnxruntime runtime for them.

Importing this package never imports torch: export-time code lives in lfm2_onnx.builder.
"""

__version__ = "0.1.0"

__all__ = ["Lfm2Model"]


def __getattr__(name):
    # Lazy: `import lfm2_onnx` stays cheap and the CLIs that don't generate never load onnxruntime.
    if name == "Lfm2Model":
        from .lfm2_model import Lfm2Model

        return Lfm2Model
    raise AttributeError(f"module 'lfm2_onnx' has no attribute {name!r}")
