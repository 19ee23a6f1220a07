"""Graph passes that bring any exporter's ONNX into one canonical, convertible form."""
