"""What the trainer, the suite, the benchmarks and launch/ share: the terminal, exit codes,
errors, tables and the repository's own path."""
