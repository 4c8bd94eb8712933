"""Generating tokens: the reference's decode loop, sampling, the native and compiled one-token steps,
token-to-text deltas."""
