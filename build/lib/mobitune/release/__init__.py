"""A sweep's model leaving the house: exported as ONNX beside the sweep's report, and registered in the project's
DVC model registry."""
