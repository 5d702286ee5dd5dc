"""Built-in learners and the non-learning reference controllers."""
