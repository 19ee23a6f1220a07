"""The analyzer: per-layer FLOPs and estimated compute energy of a DNN and of its spiking form.

    from onnx_snn.analyze import analyze, load_rates, format_table, plot
    rates, T = load_rates("eval.json")            # written by `onnx-snn eval MODEL --json`
    a = analyze("model.snn.onnx", rates, T)       # 45 nm fp32 preset: MAC 4.6 pJ, AC 0.9 pJ
    print(format_table(a)); plot(a, "energy.png")

Counting (:mod:`.flops`) needs only onnx (plus one onnxruntime run where shape inference
falls short); the energy model is in :mod:`.energy`; this package never imports torch.
"""
from .energy import (DEFAULT_PRESET, ENERGY_PRESETS, NEUROMORPHIC, Analysis, LayerRow, OtherRow,
                     SiteRow, Totals, analyze, layer_energy, load_rates, neuromorphic_estimate,
                     parse_rates)
from .flops import LayerCount, count_layers, total_macs
from .report import format_table, human, human_energy, plot, to_json

__all__ = ["DEFAULT_PRESET", "ENERGY_PRESETS", "NEUROMORPHIC", "Analysis", "LayerRow", "OtherRow",
           "SiteRow", "Totals", "analyze", "layer_energy", "load_rates", "neuromorphic_estimate",
           "parse_rates", "LayerCount", "count_layers", "total_macs", "format_table", "human",
           "human_energy", "plot", "to_json"]
