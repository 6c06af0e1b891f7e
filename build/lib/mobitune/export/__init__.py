"""Shipping a fine-tuned model: an ONNX file that takes raw images, its int8 copy, and how both compare with
PyTorch on the test set (:mod:`mobitune.export.onnx_model`)."""
