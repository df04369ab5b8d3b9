"""Export-time lowering of LFM2 checkpoints to ONNX graphs (installed as lfm2_onnx.builder)."""
