"""A run on disk: its files, the data it trained on, checkpoints, the export, its lock."""
