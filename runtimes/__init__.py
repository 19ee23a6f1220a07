"""Executors of the spiking ONNX format.

* ``onnx_snn.runtimes.ort`` — onnxruntime: inference, spike counts (torch-free).
* ``onnx_snn.runtimes.torch`` — PyTorch: surrogate-gradient fine-tuning, export back.
"""
