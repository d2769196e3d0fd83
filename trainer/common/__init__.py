"""What the trainer, the suite, the benchmarks and launch/ share: the terminal, exit codes,
errors, tables, the machine they run on and the repository's own path."""
