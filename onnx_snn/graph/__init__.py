"""Graph passes that bring any exporter's ONNX into one canonical, convertible form."""

from onnx_graphsurgeon.logger import G_LOGGER as _G_LOGGER

# onnx-graphsurgeon logs its warnings to stdout ("[W] colored module is not installed", "[W]
# Could not convert: UNDEFINED ..." for a ZipMap's map outputs), through `onnx-snn -q` and into
# a command's printed result; what matters of them the conversion says itself. Left at its
# default (INFO), it is set to errors only; a caller may set it back after importing onnx_snn.
if _G_LOGGER.severity == _G_LOGGER.INFO:
    _G_LOGGER.severity = _G_LOGGER.ERROR
