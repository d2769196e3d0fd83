"""Tools for the documentation, such as the TensorBoard screenshots in docs/screenshots."""
