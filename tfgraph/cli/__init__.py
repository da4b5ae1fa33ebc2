"""Command-line entry points: thin ``@hydra.main`` wrappers over pure functions (``tfgraph.show.show``, ...)."""
