"""The integrate-and-fire neuron of the spiking format, with a choice of surrogate gradient.

Forward (exactly the ``ai.onnx_snn.LIFNeuron`` function)::

    u = leak * v + x;  s = (u >= threshold);  v_next = u - s * threshold;  y = s * amplitude

Backward: the Heaviside step is replaced by a surrogate derivative ``g(z)`` of the normalized
membrane z = u / threshold, so ds/du = g(z)/threshold and ds/dthreshold = -g(z) z/threshold:

* ``rectangle`` (Datta & Beerel 2022, after DIET-SNN): g = 1 for 0 < z < 2, else 0;
* ``sigmoid`` (the default): g = k s (1 - s) with s = sigmoid(k (z - 1)), k = 4: the same
  peak (1 at the threshold) with half the area, smooth, and never exactly zero. One epoch of
  fine-tuning at T=2 reaches 0.5-0.65 points more top-1 with it on the trained VGG-16 and
  ResNet-20 (docs/MEASUREMENTS.md, fine-tuning).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

SURROGATES = ("sigmoid", "rectangle")
DEFAULT_SURROGATE = "sigmoid"
SIGMOID_K = 4.0


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, threshold, surrogate):
        ctx.save_for_backward(u, threshold)
        ctx.surrogate = surrogate
        return (u >= threshold).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, threshold = ctx.saved_tensors
        inv = 1.0 / threshold                     # a scalar or per-channel: cheap
        if ctx.surrogate == "rectangle":          # a mask: no multiply by g
            z = u * inv
            grad_u = torch.where((z > 0) & (z < 2), grad * inv, 0.0)
        else:   # the sigmoid's g (module docstring) in four passes over the neurons:
            # grad_u = grad s (1 - s) k/threshold
            grad_u = torch.ops.aten.sigmoid_backward(grad, _surrogate_sigmoid(u, inv)).mul_(
                SIGMOID_K * inv)
        grad_th = None
        if ctx.needs_input_grad[1]:
            # d s / d threshold = -u / threshold^2 g(z) = -(d s / d u) * u / threshold
            grad_th = -_reduce_to(grad_u * u, threshold.shape) * inv
        return grad_u, grad_th, None


def _surrogate_sigmoid(u: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """s = sigmoid(k u / threshold - k) (``inv`` = 1 / threshold), whose k s (1 - s) / threshold
    is the sigmoid surrogate's ds/du; two passes (a fill, no host copy)."""
    return torch.addcmul(torch.full((), -SIGMOID_K, dtype=u.dtype, device=u.device),
                         u, SIGMOID_K * inv).sigmoid_()


def _reduce_to(g: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to a parameter's shape (one reduction)."""
    lead = g.dim() - len(shape)
    dims = list(range(lead)) + [lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1]
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g.reshape(shape)


def spike_fn(u: torch.Tensor, threshold: torch.Tensor,
             surrogate: str = DEFAULT_SURROGATE) -> torch.Tensor:
    """0/1 spikes with the ``surrogate`` gradient."""
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
    return _Spike.apply(u, threshold, surrogate)


class _Retract(torch.autograd.Function):
    """A signed neuron's negative spike, (u < 0) and (count > 0): the Heaviside step of -u,
    with the surrogate of the positive spike moved from the threshold to zero (the same
    shape, mirrored: g(z + 1) with z = u / threshold), zero where the neuron has no spike to
    take back. The threshold gets no gradient from it (the step does not depend on it)."""

    @staticmethod
    def forward(ctx, u, threshold, had, surrogate):
        ctx.save_for_backward(u, threshold, had)
        ctx.surrogate = surrogate
        return ((u < 0) & had).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, threshold, had = ctx.saved_tensors
        inv = 1.0 / threshold
        z = u * inv + 1.0                 # 1 at u = 0, where the negative spike switches
        if ctx.surrogate == "rectangle":
            g = ((z > 0) & (z < 2)).to(u.dtype)
        else:
            sg = torch.sigmoid(SIGMOID_K * (z - 1.0))
            g = SIGMOID_K * sg * (1.0 - sg)
        return -grad * g * inv * had.to(u.dtype), None, None, None


def signed_step(x, v, c, threshold, amplitude, leak, surrogate: str = DEFAULT_SURROGATE):
    """One signed step (``ai.onnx_snn.SignedIFNeuron``): returns (y, v_next, c_next, s) with
    s in {-1, 0, 1}."""
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
    u = leak * v + x
    s = spike_fn(u, threshold, surrogate) - _Retract.apply(u, threshold, c > 0, surrogate)
    v_next = u - s * threshold
    return s * amplitude, v_next, c + s.detach(), s


def lif_step(x, v, threshold, amplitude, leak, surrogate: str = DEFAULT_SURROGATE):
    """One step: returns (y, v_next, s)."""
    u = leak * v + x
    s = spike_fn(u, threshold, surrogate)
    v_next = u - s * threshold
    return s * amplitude, v_next, s


class _LIFScan(torch.autograd.Function):
    """All T steps of a layer of neurons in one autograd node: the forward runs
    :func:`lif_step`'s operations step by step (the same float32 results) into preallocated
    buffers, the backward runs the recurrence in reverse, about four elementwise passes per
    step, and reduces each parameter's gradient once over all the steps (not once per step).
    The gradient is autograd's through :func:`lif_step` T times
    (tests/test_runtime_torch.py)."""

    @staticmethod
    def forward(ctx, X, v0, threshold, amplitude, leak, surrogate):
        T = X.shape[0]
        # the dtype lif_step computes in: under autocast a half-precision input current meets
        # float32 membranes and parameters, and u = leak v + x is float32
        dtype = torch.promote_types(torch.promote_types(X.dtype, v0.dtype),
                                    torch.promote_types(leak.dtype, threshold.dtype))
        U = torch.empty(X.shape, dtype=dtype, device=X.device)
        S = torch.empty_like(U)                             # 0/1 in u's dtype: no casts
        vs = [v0]                                           # each step's starting membrane
        for t in range(T):
            torch.add(leak * vs[-1], X[t], out=U[t])        # u = leak v + x
            torch.ge(U[t], threshold, out=S[t])             # s = u >= threshold, as 0/1
            if t < T - 1:                                   # v_next = u - s threshold
                vs.append(U[t] - S[t] * threshold)
        ctx.save_for_backward(U, S, threshold, amplitude, leak,
                              *(vs if ctx.needs_input_grad[4] else ()))
        ctx.surrogate = surrogate
        ctx.v0_shape = v0.shape
        ctx.x_dtype = X.dtype
        ctx.mark_non_differentiable(S)
        ctx.set_materialize_grads(False)
        return S * amplitude, S                             # y = s amplitude

    @staticmethod
    @once_differentiable
    def backward(ctx, gY, _gS):
        U, S, th, amp, leak, *vs = ctx.saved_tensors
        if gY is None:
            return (None,) * 6
        T = U.shape[0]
        inv = 1.0 / th
        rect = ctx.surrogate == "rectangle"
        if rect:     # ds/du = [0 < u/th < 2] / th
            Z = U * inv
            D = ((Z > 0) & (Z < 2)).to(U.dtype).mul_(inv)
            del Z
        else:        # ds/du = k sg (1 - sg) / th: sg kept
            D = _surrogate_sigmoid(U, inv)
        GS = gY * amp                     # dL/ds, then the spikes' share of dL/du in place
        GU = torch.empty_like(U)          # dL/du = dL/dx
        GV = torch.empty_like(U)          # dL/dv of each step's starting membrane
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                GS[t].addcmul_(GV[t + 1], th, value=-1.0)   # v_next = u - s th
            if rect:
                GS[t].mul_(D[t])
            else:
                torch.ops.aten.sigmoid_backward(GS[t], D[t], grad_input=GS[t]).mul_(SIGMOID_K * inv)
            if t < T - 1:
                torch.add(GV[t + 1], GS[t], out=GU[t])
            else:
                GU[t].copy_(GS[t])
            torch.mul(GU[t], leak, out=GV[t])               # u = leak v + x
        grads = [GU.to(ctx.x_dtype), None, None, None, None, None]
        if ctx.needs_input_grad[1]:
            grads[1] = _reduce_to(GV[0], ctx.v0_shape)
        if ctx.needs_input_grad[2]:
            # through the spikes' surrogate (-ds/du u / th) and the reset (-s dL/dv_next)
            g = -_reduce_to(GS.mul_(U), th.shape) * inv
            if T > 1:
                g = g - _reduce_to(S[:-1] * GV[1:], th.shape)
            grads[2] = g
        if ctx.needs_input_grad[3]:
            grads[3] = _reduce_to(gY * S, amp.shape)
        if ctx.needs_input_grad[4]:
            g = GU[0] * vs[0]
            for t in range(1, T):
                g = torch.addcmul(g, GU[t], vs[t])
            grads[4] = _reduce_to(g, leak.shape)
        return tuple(grads)


def lif_scan(X, v0, threshold, amplitude, leak, surrogate: str = DEFAULT_SURROGATE):
    """All steps at once: ``X`` is ``[T, N, ...]`` (each step's input), ``v0`` the initial
    membrane; returns (Y, S): each step's output ``[T, N, ...]`` and its 0/1 spikes (no
    gradient). The same values as :func:`lif_step` T times."""
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
    return _LIFScan.apply(X, v0, threshold, amplitude, leak, surrogate)


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
