"""The life of a training run: where it lives and how it resumes (resume), what stops it and saves it (stop), the
random states and files it leaves behind (random_state, checkpoints read, checkpoint_io written, atomic), how it is
named (run_names), logged (loggers) and what it says (console).

Nothing here imports torch at package import: `segkit.config.hydra_setup` registers resolvers from here before
the entry scripts load anything heavy.
"""
