"""Temporal coding: ANN → SNN conversions whose spikes carry values in their timing."""
