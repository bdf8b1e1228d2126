"""The candidate search: families of candidates per target (candidates), the Optuna study (study), its tasks (tasks)."""
