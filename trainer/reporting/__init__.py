"""What a run shows: TensorBoard scalars, images and histograms, and progress on the terminal."""
