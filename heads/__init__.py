"""Features -> labels: classifier heads trained on a feature store, their saved artifacts,
predictions from images or features, and the fused export (see DESIGN.md)."""
