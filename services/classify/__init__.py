"""emopipe classify stage."""
