"""What is done to a finished run: exports, the dataset card, filter runs."""
