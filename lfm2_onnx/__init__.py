"""lfm2_onnx: ONNX exports of LiquidAI LFM2 models and a fast onnxruntime runtime for them.

Importing this package never imports torch: export-time code lives in lfm2_onnx.builder.
"""

__version__ = "0.1.0"
