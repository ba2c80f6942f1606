"""emopipe sink stage."""
