"""How specs get executed: in-process (`local`) or on Ray Tune (`ray_tune`)."""
