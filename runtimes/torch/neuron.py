"""The integrate-and-fire neuron of the spiking format, with the paper's surrogate gradient.

Forward (exactly the ``ai.onnx_snn.LIFNeuron`` function)::

    u = leak * v + x;  s = (u >= threshold);  v_next = u - s * threshold;  y = s * amplitude

Backward: the Heaviside step is replaced by a rectangular surrogate on the normalized
membrane z = u / threshold: ds/dz = 1 for 0 < z < 2, so ds/du = 1/threshold and
ds/dthreshold = -u/threshold^2 inside the window, 0 outside (Datta & Beerel 2022, after
DIET-SNN).
"""
from __future__ import annotations

import torch


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, threshold):
        ctx.save_for_backward(u, threshold)
        return (u >= threshold).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, threshold = ctx.saved_tensors
        inv = 1.0 / threshold                     # a scalar or per-channel: cheap
        z = u * inv
        window = (z > 0) & (z < 2)
        grad_u = torch.where(window, grad * inv, 0.0)
        grad_th = None
        if ctx.needs_input_grad[1]:
            # d s / d threshold = -u / threshold^2 = -(d s / d u) * z inside the window
            grad_th = -_reduce_to(grad_u * z, threshold.shape)
        return grad_u, grad_th


def _reduce_to(g: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to a parameter's shape (one reduction)."""
    lead = g.dim() - len(shape)
    dims = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1]
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g.reshape(shape)


def spike_fn(u: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """0/1 spikes with the rectangular surrogate gradient."""
    return _Spike.apply(u, threshold)


def lif_step(x, v, threshold, amplitude, leak):
    """One step: returns (y, v_next, s)."""
    u = leak * v + x
    s = spike_fn(u, threshold)
    v_next = u - s * threshold
    return s * amplitude, v_next, s


def max_pool_step(x, c, m, pool):
    """One rate-exact spiking max-pool step (``ai.onnx_snn.SpikeMaxPool``): returns
    ``(y, c_next, m_next)`` with ``c_next = c + x``, ``m_next = pool(c_next)``,
    ``y = m_next - m``.

    Gradient: plain autograd. Summed over the T steps, ``y`` telescopes to
    ``pool(sum_t x_t)``, so the gradient of the time-averaged output reaches, in every window,
    the input with the largest spike count (the rate-domain twin of a DNN max pool's
    gradient); each step's own gradient goes to that step's leader and the previous one.
    """
    c_next = c + x
    m_next = pool(c_next)
    return m_next - m, c_next, m_next
