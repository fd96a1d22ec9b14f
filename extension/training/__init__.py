"""Training engines (image and text) and the pieces they share."""
