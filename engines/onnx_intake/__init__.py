"""Bring an ONNX classifier: cut it where one tensor crosses, give each prefix an exit.

  model     load, check and bring the graph to one form: one NCHW float input with a
            dynamic batch (NHWC and fixed batches converted, normalization added), one
            logits output
  cuts      the clean cut points with their shapes and measured latency share
  segments  one ONNX model per segment, checked against the whole model
  heads     exit heads and exit scores written as ONNX nodes into a segment's graph
"""
