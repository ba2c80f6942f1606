"""emopipe detect stage."""
