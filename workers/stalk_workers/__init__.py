"""stalk."""
