"""The training loop: the step, the session it runs in, the loop, its hooks and the guard."""
