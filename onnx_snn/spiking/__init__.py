"""The spiking ONNX format (version 1): the neuron function, metadata, and the rewrite."""
