"""Matplotlib figures, one module per topic. The math modules never import this package."""
