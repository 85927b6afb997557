"""edgesmith: Phi-3 -> TVM -> int4 bundles for phones and boards."""
__version__ = "0.1.0"
