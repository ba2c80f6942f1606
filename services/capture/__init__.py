"""emopipe capture stage."""
