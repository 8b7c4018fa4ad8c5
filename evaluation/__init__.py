"""Scoring and recording predictions: box metrics, mask metrics, the segmentation map's probabilities and confidence,
the prediction record, overlays and the training-free mask refinement (docs/evaluation.md)."""
