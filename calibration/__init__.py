"""Calibration: datasets and threshold fitting for early-exit models."""
