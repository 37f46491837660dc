"""The neural-state classifier: dataset and splits, training and export (TensorFlow, offline only), the model bundle,
the LiteRT runtime the daemon uses (no TensorFlow), and the evaluation report."""
