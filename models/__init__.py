"""Model and dataset adapters with the scikit-learn contract."""
