"""graphs: the torch-free side of interbasis (interaction graphs, modules, export, drawing)."""
