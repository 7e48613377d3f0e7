"""A trained model for predict, visualize and export; zero-shot classifiers; attention maps."""
