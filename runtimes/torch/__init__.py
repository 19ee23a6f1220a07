"""The PyTorch runtime of the spiking ONNX format: build a trainable module from a spiking
model, fine-tune it with surrogate-gradient learning, and write it back in the same format.

    from onnx_snn.runtimes.torch import SpikingNetwork
    net = SpikingNetwork.from_onnx("model.snn.onnx")
    logits = net(x)                         # time-averaged outputs
    net.last_spikes                         # per-site spike totals of that call
    net.to_onnx("tuned.snn.onnx")
"""
from .neuron import lif_step, signed_step, spike_fn
from .network import SpikingNetwork

__all__ = ["SpikingNetwork", "lif_step", "signed_step", "spike_fn"]
