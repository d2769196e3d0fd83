"""Tools that make the README's pictures; not part of training."""
