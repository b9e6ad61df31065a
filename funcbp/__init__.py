"""funcbp: hand-derived backpropagation in JAX."""
